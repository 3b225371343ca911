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
    Migration {
        version: 4,
        name: "rollups_samples_status",
        sql: include_str!("../../../schemas/clickhouse/0004_rollups_samples_status.sql"),
    },
];

/// Which server the statements are for: one schema source, three flavours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flavor {
    /// A current server (21+): `LowCardinality` for low-cardinality strings, a ZSTD codec for
    /// samples, and `TTL` retention on every time-partitioned table.
    pub modern: bool,
    /// A cluster: `ON CLUSTER`, `Replicated*MergeTree` engines, and a `Distributed` table
    /// `<table>_all` sharded by issue over every table.
    pub cluster: Option<String>,
    /// Days kept by `TTL` (modern servers; older ones: `tracefold retention`).
    pub retention_days: u32,
}

/// Server major version from `SELECT version()` (`18.16.1`, `24.8.4.13`).
pub fn major_version(version: &str) -> u32 {
    version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0)
}

impl Flavor {
    /// The flavour for a server of `version`: modern features from 21 on.
    pub fn for_version(version: &str, cluster: Option<String>, retention_days: u32) -> Self {
        Self { modern: major_version(version) >= 21, cluster, retention_days }
    }
}

/// Columns that are low-cardinality strings (`LowCardinality(String)` on modern servers).
const LOW_CARDINALITY: &[&str] = &[
    "project",
    "release",
    "environment",
    "exc_type",
    "level",
    "platform",
    "grouping_version",
    "src_epoch",
    "src_topic",
    "agg_topic",
    "status",
    "actor",
];

/// Renders one statement for `flavor`.
pub fn flavored(stmt: &str, db: &str, flavor: &Flavor) -> Vec<String> {
    let mut s = stmt.to_owned();
    let is_table = s.starts_with("CREATE TABLE");
    if flavor.modern && is_table {
        let mut out = String::with_capacity(s.len() + 64);
        for line in s.lines() {
            let t = line.trim().trim_end_matches(',');
            let mut parts = t.split_whitespace();
            let (name, ty) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if ty == "String" && parts.next().is_none() && LOW_CARDINALITY.contains(&name) {
                out.push_str(&line.replacen("String", "LowCardinality(String)", 1));
            } else if ty == "String" && name == "sample" {
                out.push_str(&line.replacen("String", "String CODEC(ZSTD(3))", 1));
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        s = out.trim_end().to_owned();
        // TTL on the partitioning time column.
        if let Some(i) = s.find("PARTITION BY ") {
            let expr = s[i + 13..].lines().next().unwrap_or("");
            if let (Some(a), Some(b)) = (expr.find('('), expr.rfind(')')) {
                let col = &expr[a + 1..b];
                s.push_str(&format!("\nTTL toDateTime({col}) + INTERVAL {} DAY", flavor.retention_days));
            }
        }
    }
    let Some(cluster) = &flavor.cluster else { return vec![s] };
    // ON CLUSTER right after the object name.
    let name_end = |s: &str| -> Option<(usize, String)> {
        let i = s.find(&format!("{db}."))?;
        let rest = &s[i..];
        let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
        Some((i + end, rest[db.len() + 1..end].to_owned()))
    };
    let Some((at, table)) = name_end(&s) else { return vec![s] };
    s.insert_str(at, &format!(" ON CLUSTER {cluster}"));
    if !is_table {
        return vec![s];
    }
    // Replicated engines, one replica path per shard and table; the engine's own arguments
    // (`ReplacingMergeTree(seen)`, `SummingMergeTree((count))`) follow the replica ones.
    let path = format!("'/clickhouse/tables/{{shard}}/{db}/{table}', '{{replica}}'");
    if let Some(i) = s.find("ENGINE = ") {
        let rest = &s[i + "ENGINE = ".len()..];
        let name_end = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
        let (engine, after) = rest.split_at(name_end);
        let (args, tail) = match after.strip_prefix('(') {
            // The arguments run to the parenthesis that closes the engine's.
            Some(inner) => {
                let mut depth = 1usize;
                let close = inner
                    .char_indices()
                    .find(|&(_, c)| {
                        depth = match c {
                            '(' => depth + 1,
                            ')' => depth - 1,
                            _ => depth,
                        };
                        depth == 0
                    })
                    .map_or(inner.len(), |(j, _)| j);
                (format!(", {}", &inner[..close]), inner.get(close + 1..).unwrap_or(""))
            }
            None => (String::new(), after),
        };
        if engine.ends_with("MergeTree") {
            s = format!("{}ENGINE = Replicated{engine}({path}{args}){tail}", &s[..i]);
        }
    }
    let dist = format!(
        "CREATE TABLE IF NOT EXISTS {db}.{table}_all ON CLUSTER {cluster} AS {db}.{table} \
         ENGINE = Distributed({cluster}, {db}, {table}, cityHash64(project, issue_id))"
    );
    vec![s, dist]
}

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
    progress: impl FnMut(&Migration, bool),
) -> anyhow::Result<Report> {
    migrate_with(ch, None, 90, progress).await
}

/// [`migrate`] for a cluster (`ON CLUSTER`, replicated and distributed tables) and with the
/// retention that `TTL` applies on modern servers.
///
/// # Errors
/// The first statement ClickHouse rejects, with the migration named.
pub async fn migrate_with(
    ch: &tracefold_runtime::config::ClickHouseConfig,
    cluster: Option<String>,
    retention_days: u32,
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
    let flavor = Flavor::for_version(&server_version, cluster, retention_days);
    let on_cluster = flavor.cluster.as_ref().map(|c| format!(" ON CLUSTER {c}")).unwrap_or_default();
    client
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}{on_cluster}"))
        .execute()
        .await
        .context("create database")?;
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
    let mut report = Report { server_version: server_version.clone(), ..Report::default() };
    for m in MIGRATIONS {
        let done = applied.contains(&m.version);
        progress(m, done);
        if done {
            report.skipped.push(m.version);
            continue;
        }
        for stmt in statements(m.sql, db).iter().flat_map(|st| flavored(st, db, &flavor)) {
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

#[derive(clickhouse::Row, serde::Deserialize)]
struct PartRow {
    table: String,
    partition: String,
}

/// Drops the time partitions of tracefold's tables that lie entirely before `days` ago:
/// partitions are days (`YYYYMMDD`) or months (`YYYYMM`). Returns (table, partition) dropped,
/// or that would be with `dry_run`.
///
/// # Errors
/// When ClickHouse does not answer or refuses a drop.
pub async fn retention(
    ch: &tracefold_runtime::config::ClickHouseConfig,
    days: u32,
    dry_run: bool,
) -> anyhow::Result<Vec<(String, String)>> {
    let client = client(ch);
    let db = &ch.database;
    let parts: Vec<PartRow> = client
        .query("SELECT DISTINCT table, partition FROM system.parts WHERE database = ? AND active ORDER BY table, partition")
        .bind(db.as_str())
        .fetch_all()
        .await
        .context("list partitions")?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let cutoff_days = now_ms.div_euclid(86_400_000) - i64::from(days);
    let (y, m, d) = tracefold_model::time::civil_from_days(cutoff_days);
    let (cut_day, cut_month) = (y * 10_000 + m * 100 + d, y * 100 + m);
    let mut out = Vec::new();
    for p in parts {
        let id = p.partition.trim_matches('\'');
        let Ok(n) = id.parse::<i64>() else { continue };
        // A day partition before the cutoff day; a month partition before the cutoff's month.
        let old = match id.len() {
            8 => n < cut_day,
            6 => n < cut_month,
            _ => false,
        };
        if !old {
            continue;
        }
        if !dry_run {
            client
                .query(&format!("ALTER TABLE {db}.{} DROP PARTITION {}", p.table, p.partition))
                .execute()
                .await
                .with_context(|| format!("drop partition {} of {}", p.partition, p.table))?;
        }
        out.push((p.table, id.to_owned()));
    }
    Ok(out)
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

    fn all(flavor: &Flavor) -> Vec<String> {
        MIGRATIONS.iter().flat_map(|m| statements(m.sql, "tf")).flat_map(|st| flavored(&st, "tf", flavor)).collect()
    }

    #[test]
    fn plain_flavour_is_the_files_as_they_are() {
        let plain = all(&Flavor::default());
        let direct: Vec<String> = MIGRATIONS.iter().flat_map(|m| statements(m.sql, "tf")).collect();
        assert_eq!(plain, direct);
        assert!(plain.iter().all(|s| !s.contains("LowCardinality") && !s.contains("TTL") && !s.contains("ON CLUSTER")));
    }

    #[test]
    fn modern_flavour_adds_low_cardinality_codecs_and_ttl() {
        let st = all(&Flavor { modern: true, cluster: None, retention_days: 30 });
        let agg = st.iter().find(|s| s.starts_with("CREATE TABLE IF NOT EXISTS tf.aggregates\n")).unwrap();
        assert!(agg.contains("project          LowCardinality(String)"), "{agg}");
        assert!(agg.contains("sample           String CODEC(ZSTD(3))"), "{agg}");
        assert!(agg.contains("issue_id         String,"), "issue ids stay plain strings: {agg}");
        assert!(agg.ends_with("TTL toDateTime(minute) + INTERVAL 30 DAY"), "{agg}");
        let users = st.iter().find(|s| s.contains("TABLE IF NOT EXISTS tf.issue_users_1h")).unwrap();
        assert!(users.ends_with("TTL toDateTime(hour) + INTERVAL 30 DAY"), "{users}");
        let issues = st.iter().find(|s| s.contains("TABLE IF NOT EXISTS tf.issues\n")).unwrap();
        assert!(!issues.contains("TTL"), "issues are kept: {issues}");
        assert_eq!(major_version("24.8.4.13"), 24);
        assert!(Flavor::for_version("23.8.1", None, 90).modern && !Flavor::for_version("18.16.1", None, 90).modern);
    }

    #[test]
    fn cluster_flavour_replicates_and_distributes_every_table() {
        let st = all(&Flavor { modern: false, cluster: Some("main".into()), retention_days: 90 });
        let tables: Vec<&String> =
            st.iter().filter(|s| s.starts_with("CREATE TABLE") && !s.contains("_all ON CLUSTER")).collect();
        assert!(tables.len() >= 8);
        for t in &tables {
            assert!(t.contains(" ON CLUSTER main"), "{t}");
            assert!(t.contains("ENGINE = Replicated"), "{t}");
            assert!(t.contains("'/clickhouse/tables/{shard}/tf/"), "{t}");
            let name = t.split_whitespace().nth(5).unwrap().trim_start_matches("tf.");
            let dist = format!("CREATE TABLE IF NOT EXISTS tf.{name}_all ON CLUSTER main AS tf.{name} ENGINE = Distributed(main, tf, {name}, cityHash64(project, issue_id))");
            assert!(st.iter().any(|s| s.split_whitespace().collect::<Vec<_>>().join(" ") == dist), "{dist}");
        }
        let summing = st.iter().find(|s| s.contains("TABLE IF NOT EXISTS tf.issue_counts_1m ON CLUSTER")).unwrap();
        assert!(summing.contains("ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/tf/issue_counts_1m', '{replica}', (count))"), "{summing}");
        let replacing = st.iter().find(|s| s.contains("TABLE IF NOT EXISTS tf.issue_samples ON CLUSTER")).unwrap();
        assert!(replacing.contains("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/tf/issue_samples', '{replica}', seen)"), "{replacing}");
        let mv = st.iter().find(|s| s.contains("VIEW IF NOT EXISTS tf.issues_mv")).unwrap();
        assert!(mv.contains("tf.issues_mv ON CLUSTER main TO tf.issues"), "{mv}");
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
