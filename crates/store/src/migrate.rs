//! Versioned, idempotent ClickHouse migrations (`schemas/clickhouse/*.sql`), applied by
//! `tracefold migrate` and by `tracefold dev`. Applied versions are recorded in
//! `<db>.schema_migrations`; every statement is also `IF NOT EXISTS`, so a half-applied
//! migration can be re-run. `tracefold retention` drops old partitions where there is no TTL.

use crate::client::{client, ident, major_version, server_version};
use crate::error::{step, Error, Result};
use tracefold_runtime::config::ClickHouseConfig;

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
    Migration { version: 5, name: "outcomes", sql: include_str!("../../../schemas/clickhouse/0005_outcomes.sql") },
    Migration {
        version: 6,
        name: "signal_deliveries",
        sql: include_str!("../../../schemas/clickhouse/0006_signal_deliveries.sql"),
    },
    Migration { version: 7, name: "artifacts", sql: include_str!("../../../schemas/clickhouse/0007_artifacts.sql") },
    Migration {
        version: 8,
        name: "issue_first_release",
        sql: include_str!("../../../schemas/clickhouse/0008_issue_first_release.sql"),
    },
    Migration {
        version: 9,
        name: "issue_breakdowns",
        sql: include_str!("../../../schemas/clickhouse/0009_issue_breakdowns.sql"),
    },
    Migration { version: 10, name: "users_1d", sql: include_str!("../../../schemas/clickhouse/0010_users_1d.sql") },
    Migration {
        version: 11,
        name: "issue_aliases",
        sql: include_str!("../../../schemas/clickhouse/0011_issue_aliases.sql"),
    },
    Migration {
        version: 12,
        name: "issue_users_1d_v2",
        sql: include_str!("../../../schemas/clickhouse/0012_issue_users_1d_v2.sql"),
    },
    Migration {
        version: 13,
        name: "issue_users_1d_unfed",
        sql: include_str!("../../../schemas/clickhouse/0013_issue_users_1d_unfed.sql"),
    },
    Migration {
        version: 14,
        name: "issue_rankings",
        sql: include_str!("../../../schemas/clickhouse/0014_issue_rankings.sql"),
    },
    Migration {
        version: 15,
        name: "issue_ranking_runs_and_rows",
        sql: include_str!("../../../schemas/clickhouse/0015_issue_ranking_runs_and_rows.sql"),
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

/// Whether a statement is a backfill (`INSERT INTO ... SELECT`) rather than a `CREATE`: it
/// fills a table made in the same migration from rows stored before it, with states that a
/// row counted twice does not change (a re-run repeats it).
pub fn is_backfill(stmt: &str) -> bool {
    stmt.starts_with("INSERT INTO ")
}

/// Whether a statement drops an object (`DROP TABLE IF EXISTS {db}.name`): a materialized
/// view that no longer feeds its table (0013). Idempotent: a re-run finds nothing to drop.
pub fn is_drop(stmt: &str) -> bool {
    stmt.starts_with("DROP TABLE IF EXISTS ")
}

/// `{db}.name` -> `{db}.name_all` everywhere in `s`: a backfill on a cluster reads and writes
/// the `Distributed` tables, which send every row to the shard of its issue.
fn distributed_names(s: &str, db: &str) -> String {
    let prefix = format!("{db}.");
    let mut out = String::with_capacity(s.len() + 16);
    let mut rest = s;
    while let Some(i) = rest.find(&prefix) {
        let after = &rest[i + prefix.len()..];
        let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        out.push_str(&rest[..i + prefix.len() + end]);
        out.push_str("_all");
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Whether a statement adds a column to a table (`ALTER TABLE {db}.t ADD COLUMN ...`).
pub fn is_alter(stmt: &str) -> bool {
    stmt.starts_with("ALTER TABLE ")
}

/// The table and column that an `ALTER TABLE {db}.table [ON CLUSTER c] ADD COLUMN
/// [IF NOT EXISTS] column ...` statement adds, if it is one.
pub fn added_column<'s>(stmt: &'s str, db: &str) -> Option<(&'s str, &'s str)> {
    let rest = stmt.strip_prefix("ALTER TABLE ")?.strip_prefix(db)?.strip_prefix('.')?;
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    let (table, rest) = rest.split_at(end);
    let rest = &rest[rest.find("ADD COLUMN ")? + "ADD COLUMN ".len()..];
    let rest = rest.strip_prefix("IF NOT EXISTS ").unwrap_or(rest);
    let column = rest.split_whitespace().next()?;
    Some((table, column))
}

/// Renders one statement for `flavor`.
pub fn flavored(stmt: &str, db: &str, flavor: &Flavor) -> Vec<String> {
    if is_backfill(stmt) {
        return vec![if flavor.cluster.is_some() { distributed_names(stmt, db) } else { stmt.to_owned() }];
    }
    if is_alter(stmt) {
        // `ADD COLUMN IF NOT EXISTS` is new in ClickHouse 19; older servers get the plain
        // statement, which [`migrate`] skips when the column exists.
        let s = if flavor.modern { stmt.to_owned() } else { stmt.replacen(" IF NOT EXISTS", "", 1) };
        let Some(cluster) = &flavor.cluster else { return vec![s] };
        let Some((table, _)) = added_column(&s, db) else { return vec![s] };
        // The local tables on every node, then the Distributed table over them, which must
        // have the column too (the writer inserts into it).
        let at = format!("{db}.{table} ");
        return vec![
            s.replacen(&at, &format!("{db}.{table} ON CLUSTER {cluster} "), 1),
            s.replacen(&at, &format!("{db}.{table}_all ON CLUSTER {cluster} "), 1),
        ];
    }
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
        // TTL on the partitioning time column, before the table's SETTINGS if it has some.
        if let Some(i) = s.find("PARTITION BY ") {
            let expr = s[i + 13..].lines().next().unwrap_or("");
            if let (Some(a), Some(b)) = (expr.find('('), expr.rfind(')')) {
                let ttl = format!("\nTTL toDateTime({}) + INTERVAL {} DAY", &expr[a + 1..b], flavor.retention_days);
                match s.find("\nSETTINGS ") {
                    Some(at) => s.insert_str(at, &ttl),
                    None => s.push_str(&ttl),
                }
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
    // Rows of one identity land on one shard, where the table's engine can collapse them.
    let shard_key = sharding_key(&table);
    let dist = format!(
        "CREATE TABLE IF NOT EXISTS {db}.{table}_all ON CLUSTER {cluster} AS {db}.{table} \
         ENGINE = Distributed({cluster}, {db}, {table}, {shard_key})"
    );
    vec![s, dist]
}

/// The `Distributed` sharding key of `table`: by issue, except for tables without one.
fn sharding_key(table: &str) -> &'static str {
    match table {
        // One record's copies share project and source, so they meet on one shard.
        "outcomes" => "cityHash64(project, source)",
        // A release's artifacts (users per day) on one shard (they have no issue).
        "artifacts" | "release_users_1d" => "cityHash64(project, release)",
        // One row per computation of the rankings (no project: a run holds them all).
        "issue_ranking_runs" => "cityHash64(window_seconds, run)",
        _ => "cityHash64(project, issue_id)",
    }
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

/// Checks the names the statements are formatted with: the database and the cluster (each
/// `[A-Za-z0-9_]+`), so that a name that is not an identifier is refused before any
/// statement is printed or sent, and not half way through the schema.
///
/// # Errors
/// [`Error::Identifier`] naming `clickhouse.database` or `--cluster`.
pub fn check_names(database: &str, cluster: Option<&str>) -> Result<()> {
    ident("clickhouse.database", database)?;
    if let Some(c) = cluster {
        ident("--cluster", c)?;
    }
    Ok(())
}

/// Creates the database and applies every migration not yet recorded, calling `progress`
/// before each one.
///
/// # Errors
/// The first statement ClickHouse rejects, with the migration named.
pub async fn migrate(ch: &ClickHouseConfig, progress: impl FnMut(&Migration, bool)) -> Result<Report> {
    migrate_with(ch, None, 90, progress).await
}

/// [`migrate`] for a cluster (`ON CLUSTER`, replicated and distributed tables) and with the
/// retention that `TTL` applies on modern servers.
///
/// # Errors
/// The first statement ClickHouse rejects, with the migration named.
pub async fn migrate_with(
    ch: &ClickHouseConfig,
    cluster: Option<String>,
    retention_days: u32,
    progress: impl FnMut(&Migration, bool),
) -> Result<Report> {
    apply(ch, cluster, retention_days, MIGRATIONS, progress).await
}

/// [`migrate_with`] for the migrations `migrations` (tests bring a database to an older
/// version with a prefix of [`MIGRATIONS`]).
async fn apply(
    ch: &ClickHouseConfig,
    cluster: Option<String>,
    retention_days: u32,
    migrations: &[Migration],
    mut progress: impl FnMut(&Migration, bool),
) -> Result<Report> {
    let client = client(ch);
    check_names(&ch.database, cluster.as_deref())?;
    let db = ch.database.as_str();
    let server_version = match server_version(&client).await {
        Err(Error::ClickHouse { source, .. }) => {
            return Err(Error::ClickHouse { what: format!("cannot reach ClickHouse at {}", ch.url), source })
        }
        r => r?,
    };
    let flavor = Flavor::for_version(&server_version, cluster, retention_days);
    let on_cluster = flavor.cluster.as_ref().map(|c| format!(" ON CLUSTER {c}")).unwrap_or_default();
    client
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}{on_cluster}"))
        .execute()
        .await
        .map_err(step("create database"))?;
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, applied_at DateTime DEFAULT now()) \
             ENGINE = MergeTree ORDER BY version"
        ))
        .execute()
        .await
        .map_err(step("create schema_migrations"))?;
    let applied: Vec<u32> = client
        .query(&format!("SELECT DISTINCT version FROM {db}.schema_migrations"))
        .fetch_all::<VersionRow>()
        .await
        .map_err(step("read schema_migrations"))?
        .into_iter()
        .map(|r| r.version)
        .collect();
    let mut report = Report { server_version: server_version.clone(), ..Report::default() };
    for m in migrations {
        let done = applied.contains(&m.version);
        progress(m, done);
        if done {
            report.skipped.push(m.version);
            continue;
        }
        for stmt in statements(m.sql, db).iter().flat_map(|st| flavored(st, db, &flavor)) {
            let added = added_column(&stmt, db).filter(|_| !stmt.contains("IF NOT EXISTS"));
            if let Some((table, column)) = added {
                // A re-run of a half-applied migration on a server without `ADD COLUMN IF NOT
                // EXISTS`: the column (or a Nested column's subcolumns) may be there already.
                // On a cluster this asks the node the client talks to.
                if column_exists(&client, db, table, column).await? {
                    continue;
                }
            }
            let done = client.query(&stmt).execute().await.map_err(step(format!(
                "migration {:04}_{} failed at: {}",
                m.version,
                m.name,
                first_line(&stmt)
            )));
            match (done, added) {
                (Ok(()), _) => {}
                // Another `migrate` running at once added the column between the check above
                // and this statement: what the statement was for is done.
                (Err(_), Some((table, column))) if column_exists(&client, db, table, column).await? => {}
                (Err(e), _) => return Err(e),
            }
        }
        client
            .query(&format!("INSERT INTO {db}.schema_migrations (version, name) VALUES (?, ?)"))
            .bind(m.version)
            .bind(m.name)
            .execute()
            .await
            .map_err(step("record migration"))?;
        report.applied.push(m.version);
    }
    Ok(report)
}

/// Whether `db.table` has the column `column` (or, for a Nested column, its subcolumns).
async fn column_exists(client: &clickhouse::Client, db: &str, table: &str, column: &str) -> Result<bool> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct N {
        n: u64,
    }
    let n = client
        .query(
            "SELECT count() AS n FROM system.columns WHERE database = ? AND table = ? \
             AND (name = ? OR startsWith(name, concat(?, '.')))",
        )
        .bind(db)
        .bind(table)
        .bind(column)
        .bind(column)
        .fetch_one::<N>()
        .await
        .map_err(step("read system.columns"))?
        .n;
    Ok(n > 0)
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
pub async fn retention(ch: &ClickHouseConfig, days: u32, dry_run: bool) -> Result<Vec<(String, String)>> {
    let client = client(ch);
    let db = ident("clickhouse.database", &ch.database)?;
    let parts: Vec<PartRow> = client
        .query("SELECT DISTINCT table, partition FROM system.parts WHERE database = ? AND active ORDER BY table, partition")
        .bind(db)
        .fetch_all()
        .await
        .map_err(step("list partitions"))?;
    // A clock before 1970 counts as 1970: nothing is old then.
    let now_ms = tracefold_model::time::now_ms();
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
            // The table name comes from system.parts; the partition is the server's own
            // literal for its id, which is all digits here.
            let table = ident("table", &p.table)?;
            client
                .query(&format!("ALTER TABLE {db}.{table} DROP PARTITION {}", p.partition))
                .execute()
                .await
                .map_err(step(format!("drop partition {} of {}", p.partition, p.table)))?;
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
        // But for `ADD COLUMN IF NOT EXISTS`, which servers before 19 do not know.
        let direct: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|m| statements(m.sql, "tf"))
            .map(|s| if is_alter(&s) { s.replacen(" IF NOT EXISTS", "", 1) } else { s })
            .collect();
        assert_eq!(plain, direct);
        assert!(plain.iter().all(|s| !s.contains("LowCardinality") && !s.contains("TTL") && !s.contains("ON CLUSTER")));
    }

    #[test]
    fn flavours_follow_the_server_version() {
        assert_eq!(major_version("24.8.4.13"), 24);
        assert_eq!(major_version("18.16.1"), 18);
        assert!(Flavor::for_version("23.8.1", None, 90).modern && !Flavor::for_version("18.16.1", None, 90).modern);
        assert_eq!(Flavor::for_version("21.1", Some("c".into()), 7).cluster.as_deref(), Some("c"));
    }

    // Structure, not text: every statement of every flavour is tokenized and parsed into what it
    // declares (objects, columns, engine and its arguments, keys, TTL), and the flavours are
    // compared on that. Only ClickHouse 18.16 runs here; the single-node flavour is also
    // compared with what that server reports having created.

    /// A token of ClickHouse DDL.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    enum Tok {
        Word(String),
        Str(String),
        Num(String),
        Sym(String),
    }

    impl std::fmt::Display for Tok {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Tok::Word(w) | Tok::Num(w) | Tok::Sym(w) => f.write_str(w),
                Tok::Str(s) => write!(f, "'{s}'"),
            }
        }
    }

    fn word(w: &str) -> Tok {
        Tok::Word(w.into())
    }

    fn sym(s: &str) -> Tok {
        Tok::Sym(s.into())
    }

    fn text(toks: &[Tok]) -> String {
        toks.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
    }

    /// Tokens of `sql`; panics on anything a DDL statement of ours should not contain
    /// (an unknown character, an unterminated string, unbalanced parentheses).
    fn tokens(sql: &str) -> Vec<Tok> {
        let b = sql.as_bytes();
        let (mut out, mut i, mut depth) = (Vec::new(), 0, 0i32);
        while i < b.len() {
            let c = b[i];
            let start = i;
            if c.is_ascii_whitespace() {
                i += 1;
            } else if c.is_ascii_alphabetic() || c == b'_' {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(Tok::Word(sql[start..i].to_owned()));
            } else if c.is_ascii_digit() {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Tok::Num(sql[start..i].to_owned()));
            } else if c == b'\'' {
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                assert!(i < b.len(), "unterminated string in: {sql}");
                i += 1;
                out.push(Tok::Str(sql[start + 1..i - 1].to_owned()));
            } else if sql[i..].starts_with("!=") {
                i += 2;
                out.push(sym("!="));
            } else if b"(),.=+-*/<>".contains(&c) {
                depth += i32::from(c == b'(') - i32::from(c == b')');
                assert!(depth >= 0, "unbalanced ')' in: {sql}");
                i += 1;
                out.push(Tok::Sym((c as char).to_string()));
            } else {
                panic!("unexpected {:?} in: {sql}", c as char);
            }
        }
        assert_eq!(depth, 0, "unbalanced '(' in: {sql}");
        out
    }

    /// Splits `toks` at top-level commas.
    fn split_top(toks: &[Tok]) -> Vec<Vec<Tok>> {
        let (mut out, mut cur, mut depth) = (Vec::new(), Vec::new(), 0);
        for t in toks {
            match t {
                Tok::Sym(s) if s == "(" => depth += 1,
                Tok::Sym(s) if s == ")" => depth -= 1,
                Tok::Sym(s) if s == "," && depth == 0 => {
                    out.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(t.clone());
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// `(x)` -> `x`: ClickHouse reports `SummingMergeTree((count))` as `SummingMergeTree(count)`
    /// and `ORDER BY (a, b)` as `a, b`.
    fn unwrap_parens(toks: &[Tok]) -> Vec<Tok> {
        if toks.len() >= 2 && toks[0] == sym("(") && toks[toks.len() - 1] == sym(")") {
            let inner = &toks[1..toks.len() - 1];
            // Only when the outer pair encloses everything.
            let mut depth = 0;
            if inner.iter().all(|t| {
                depth += i32::from(*t == sym("(")) - i32::from(*t == sym(")"));
                depth >= 0
            }) {
                return inner.to_vec();
            }
        }
        toks.to_vec()
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Kind {
        Table,
        MaterializedView,
        View,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Column {
        name: String,
        ty: Vec<Tok>,
        default: Option<Vec<Tok>>,
        codec: Option<Vec<Tok>>,
    }

    /// What one CREATE statement declares.
    #[derive(Debug, Clone)]
    struct Ddl {
        kind: Kind,
        name: String,
        cluster: Option<String>,
        columns: Vec<Column>,
        /// `CREATE TABLE x AS db.y`: the table whose structure it takes.
        as_table: Option<String>,
        engine: Option<String>,
        engine_args: Vec<Vec<Tok>>,
        partition_by: Option<Vec<Tok>>,
        order_by: Option<Vec<Tok>>,
        ttl: Option<Vec<Tok>>,
        /// `SETTINGS ...` of a table (e.g. `index_granularity = 256`).
        settings: Option<Vec<Tok>>,
        /// A materialized view's target.
        to: Option<String>,
        /// A view's SELECT.
        select: Vec<Tok>,
        /// Columns added by later `ALTER TABLE ... ADD COLUMN` (also in `columns` of a table
        /// with columns; a Distributed table has only these).
        altered: Vec<Column>,
    }

    impl Ddl {
        fn new(kind: Kind, name: String, cluster: Option<String>) -> Self {
            Self {
                kind,
                name,
                cluster,
                columns: Vec::new(),
                as_table: None,
                engine: None,
                engine_args: Vec::new(),
                partition_by: None,
                order_by: None,
                ttl: None,
                settings: None,
                to: None,
                select: Vec::new(),
                altered: Vec::new(),
            }
        }
    }

    struct Cursor {
        toks: Vec<Tok>,
        i: usize,
        sql: String,
    }

    impl Cursor {
        fn peek(&self) -> Option<&Tok> {
            self.toks.get(self.i)
        }
        fn next(&mut self) -> Tok {
            let t = self.toks.get(self.i).cloned().unwrap_or_else(|| panic!("unexpected end of: {}", self.sql));
            self.i += 1;
            t
        }
        fn eat(&mut self, w: &str) -> bool {
            if self.peek() == Some(&word(w)) {
                self.i += 1;
                true
            } else {
                false
            }
        }
        fn expect(&mut self, t: &Tok) {
            let got = self.next();
            assert_eq!(&got, t, "in: {}", self.sql);
        }
        fn ident(&mut self) -> String {
            match self.next() {
                Tok::Word(w) => w,
                t => panic!("expected a name, got {t} in: {}", self.sql),
            }
        }
        /// `ON CLUSTER c` -> `Some(c)`, nothing -> `None`.
        fn on_cluster(&mut self) -> Option<String> {
            if !self.eat("ON") {
                return None;
            }
            assert!(self.eat("CLUSTER"), "ON without CLUSTER in: {}", self.sql);
            Some(self.ident())
        }
        /// `tf.name` -> `name`: every object lives in the migrated database.
        fn object(&mut self) -> String {
            let db = self.ident();
            assert_eq!(db, "tf", "object outside the database in: {}", self.sql);
            self.expect(&sym("."));
            self.ident()
        }
        /// Tokens up to (not including) a top-level word of `stops`, or the end.
        fn until(&mut self, stops: &[&str]) -> Vec<Tok> {
            let mut depth = 0;
            let mut out = Vec::new();
            while let Some(t) = self.peek() {
                if depth == 0 && stops.iter().any(|s| *t == word(s)) {
                    break;
                }
                depth += i32::from(*t == sym("(")) - i32::from(*t == sym(")"));
                out.push(self.next());
            }
            out
        }
        /// A parenthesized group, without its parentheses.
        fn group(&mut self) -> Vec<Tok> {
            self.expect(&sym("("));
            let mut depth = 1;
            let mut out = Vec::new();
            loop {
                let t = self.next();
                depth += i32::from(t == sym("(")) - i32::from(t == sym(")"));
                if depth == 0 {
                    return out;
                }
                out.push(t);
            }
        }
    }

    const CLAUSES: &[&str] = &["PARTITION", "ORDER", "TTL", "SETTINGS", "PRIMARY", "SAMPLE"];

    /// `ENGINE = Name(args) PARTITION BY .. ORDER BY .. TTL ..` into `d`.
    fn engine_and_clauses(c: &mut Cursor, d: &mut Ddl) {
        assert!(c.eat("ENGINE"), "a table without ENGINE: {}", c.sql);
        c.expect(&sym("="));
        d.engine = Some(c.ident());
        if c.peek() == Some(&sym("(")) {
            d.engine_args = split_top(&c.group());
        }
        while c.peek().is_some() {
            let clause = c.ident();
            if clause != "TTL" && clause != "SETTINGS" {
                assert!(c.eat("BY"), "{clause} without BY in: {}", c.sql);
            }
            let expr = c.until(CLAUSES);
            assert!(!expr.is_empty(), "empty {clause} in: {}", c.sql);
            let slot = match clause.as_str() {
                "PARTITION" => &mut d.partition_by,
                "ORDER" => &mut d.order_by,
                "TTL" => &mut d.ttl,
                "SETTINGS" => &mut d.settings,
                other => panic!("unexpected clause {other} in: {}", c.sql),
            };
            assert!(slot.replace(expr).is_none(), "{clause} twice in: {}", c.sql);
        }
    }

    fn parse_ddl(sql: &str) -> Ddl {
        let mut c = Cursor { toks: tokens(sql), i: 0, sql: sql.to_owned() };
        assert!(c.eat("CREATE"), "not a CREATE: {sql}");
        let kind = if c.eat("TABLE") {
            Kind::Table
        } else if c.eat("MATERIALIZED") {
            assert!(c.eat("VIEW"));
            Kind::MaterializedView
        } else {
            assert!(c.eat("VIEW"), "CREATE what? {sql}");
            Kind::View
        };
        assert!(c.eat("IF") && c.eat("NOT") && c.eat("EXISTS"), "not idempotent: {sql}");
        let name = c.object();
        let cluster = c.on_cluster();
        let mut d = Ddl::new(kind.clone(), name, cluster);
        match kind {
            Kind::Table if c.eat("AS") => {
                d.as_table = Some(c.object());
                engine_and_clauses(&mut c, &mut d);
            }
            Kind::Table => {
                for col in split_top(&c.group()) {
                    let mut cc = Cursor { toks: col, i: 0, sql: sql.to_owned() };
                    let name = cc.ident();
                    let ty = cc.until(&["DEFAULT", "CODEC"]);
                    assert!(!ty.is_empty(), "column {name} without a type in: {sql}");
                    let mut column = Column { name, ty, default: None, codec: None };
                    while cc.peek().is_some() {
                        if cc.eat("DEFAULT") {
                            column.default = Some(cc.until(&["CODEC"]));
                        } else {
                            assert!(cc.eat("CODEC"), "{sql}");
                            column.codec = Some(cc.group());
                        }
                    }
                    d.columns.push(column);
                }
                engine_and_clauses(&mut c, &mut d);
            }
            Kind::MaterializedView => {
                assert!(c.eat("TO"), "a materialized view without TO (an implicit inner table): {sql}");
                d.to = Some(c.object());
                assert!(c.eat("AS"), "{sql}");
                d.select = c.until(&[]);
            }
            Kind::View => {
                assert!(c.eat("AS"), "{sql}");
                d.select = c.until(&[]);
            }
        }
        assert_eq!(c.peek(), None, "trailing tokens in: {sql}");
        if d.kind != Kind::Table {
            assert_eq!(d.select.first(), Some(&word("SELECT")), "{sql}");
        }
        d
    }

    /// A column's declaration: a `Nested(a T, b U)` column `n` is the columns `n.a Array(T)`
    /// and `n.b Array(U)`, as ClickHouse stores and reports it.
    fn column_decl(name: String, ty: Vec<Tok>) -> Vec<Column> {
        if ty.first() != Some(&word("Nested")) {
            return vec![Column { name, ty, default: None, codec: None }];
        }
        split_top(&unwrap_parens(&ty[1..]))
            .into_iter()
            .map(|sub| {
                let (Tok::Word(n), t) = (&sub[0], &sub[1..]) else { panic!("a Nested field without a name") };
                let mut arr = vec![word("Array"), sym("(")];
                arr.extend_from_slice(t);
                arr.push(sym(")"));
                Column { name: format!("{name}.{n}"), ty: arr, default: None, codec: None }
            })
            .collect()
    }

    /// `ALTER TABLE tf.t [ON CLUSTER c] ADD COLUMN [IF NOT EXISTS] name type`: the table, the
    /// cluster and the columns added.
    fn parse_alter(sql: &str) -> (String, Option<String>, Vec<Column>) {
        let mut c = Cursor { toks: tokens(sql), i: 0, sql: sql.to_owned() };
        assert!(c.eat("ALTER") && c.eat("TABLE"), "not an ALTER TABLE: {sql}");
        let table = c.object();
        let cluster = c.on_cluster();
        assert!(c.eat("ADD") && c.eat("COLUMN"), "an ALTER that does not add a column: {sql}");
        if c.eat("IF") {
            assert!(c.eat("NOT") && c.eat("EXISTS"), "{sql}");
        }
        let name = c.ident();
        let ty = c.until(&[]);
        assert!(!ty.is_empty(), "column {name} without a type in: {sql}");
        (table, cluster, column_decl(name, ty))
    }

    /// `DROP TABLE IF EXISTS tf.name [ON CLUSTER c]`: the object and the cluster.
    fn parse_drop(sql: &str) -> (String, Option<String>) {
        let mut c = Cursor { toks: tokens(sql), i: 0, sql: sql.to_owned() };
        assert!(c.eat("DROP") && c.eat("TABLE"), "not a DROP TABLE: {sql}");
        assert!(c.eat("IF") && c.eat("EXISTS"), "not idempotent: {sql}");
        let name = c.object();
        let cluster = c.on_cluster();
        assert_eq!(c.peek(), None, "trailing tokens in: {sql}");
        (name, cluster)
    }

    /// The objects that `stmts` (rendered, without backfills) declare, less those a later
    /// `DROP` removes, with the columns that
    /// ALTERs add folded into the tables they alter.
    fn declare<'a>(stmts: impl IntoIterator<Item = &'a str>) -> Vec<Ddl> {
        let mut out: Vec<Ddl> = Vec::new();
        for s in stmts {
            if is_drop(s) {
                let (name, cluster) = parse_drop(s);
                let at = out
                    .iter()
                    .position(|d| d.name == name)
                    .unwrap_or_else(|| panic!("{s}: {name} is not declared before"));
                assert_eq!(out[at].cluster, cluster, "{s}: ON CLUSTER as the object's");
                // Only views are dropped: a table keeps the rows it holds.
                assert_eq!(out[at].kind, Kind::MaterializedView, "{s}");
                out.remove(at);
                continue;
            }
            if !is_alter(s) {
                out.push(parse_ddl(s));
                continue;
            }
            let (table, cluster, cols) = parse_alter(s);
            let d = out
                .iter_mut()
                .find(|d| d.name == table)
                .unwrap_or_else(|| panic!("{s}: {table} is not declared before"));
            assert_eq!(d.kind, Kind::Table, "{s}");
            assert_eq!(d.cluster, cluster, "{s}: ON CLUSTER as the table's");
            if d.as_table.is_none() {
                d.columns.extend(cols.iter().cloned());
            }
            d.altered.extend(cols);
        }
        out
    }

    fn parsed(flavor: &Flavor) -> Vec<Ddl> {
        let stmts = all(flavor);
        declare(stmts.iter().filter(|s| !is_backfill(s)).map(String::as_str))
    }

    fn find<'a>(ddls: &'a [Ddl], name: &str) -> &'a Ddl {
        ddls.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("{name} is declared"))
    }

    /// A column type without what only modern servers get: `LowCardinality(T)` -> `T`.
    fn base_type(ty: &[Tok]) -> Vec<Tok> {
        if ty.first() == Some(&word("LowCardinality")) {
            unwrap_parens(&ty[1..])
        } else {
            ty.to_vec()
        }
    }

    const RETENTION: u32 = 30;

    /// The columns of few distinct values, which modern servers store as `LowCardinality`:
    /// never issue ids, titles or samples.
    const LOW: &[&str] = &[
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

    fn flavours() -> [(&'static str, Flavor); 4] {
        let cluster = Some("main".to_owned());
        [
            ("plain", Flavor::default()),
            ("modern", Flavor { modern: true, cluster: None, retention_days: RETENTION }),
            ("cluster", Flavor { modern: false, cluster: cluster.clone(), retention_days: RETENTION }),
            ("modern cluster", Flavor { modern: true, cluster, retention_days: RETENTION }),
        ]
    }

    #[test]
    fn every_flavour_declares_the_same_tables_with_the_same_structure() {
        let plain = parsed(&Flavor::default());
        let tables: Vec<&Ddl> = plain.iter().filter(|d| d.kind == Kind::Table).collect();
        assert_eq!(tables.len(), 20);
        for (fname, flavor) in flavours() {
            let ddls = parsed(&flavor);
            let cluster = flavor.cluster.is_some();
            // The same objects in the same order; on a cluster each table is followed by its
            // Distributed table.
            let mut want: Vec<String> = Vec::new();
            for d in &plain {
                want.push(d.name.clone());
                if cluster && d.kind == Kind::Table {
                    want.push(format!("{}_all", d.name));
                }
            }
            assert_eq!(ddls.iter().map(|d| d.name.clone()).collect::<Vec<_>>(), want, "{fname}");
            for d in &ddls {
                // ON CLUSTER on every DDL of a cluster flavour, on none otherwise.
                assert_eq!(d.cluster.as_deref(), flavor.cluster.as_deref(), "{fname}: {}", d.name);
            }
            for p in &plain {
                let d = find(&ddls, &p.name);
                assert_eq!(d.kind, p.kind, "{fname}: {}", p.name);
                // Views select the same, and read and feed local tables.
                assert_eq!(d.select, p.select, "{fname}: {}", p.name);
                assert_eq!(d.to, p.to, "{fname}: {}", p.name);
                if p.kind != Kind::Table {
                    continue;
                }
                let engine = p.engine.clone().unwrap();
                assert!(engine.ends_with("MergeTree"), "{}: {engine}", p.name);
                // Keys identical across flavours.
                assert_eq!(d.order_by, p.order_by, "{fname}: ORDER BY of {}", p.name);
                assert_eq!(d.partition_by, p.partition_by, "{fname}: PARTITION BY of {}", p.name);
                assert_eq!(d.settings, p.settings, "{fname}: SETTINGS of {}", p.name);
                assert!(p.order_by.is_some(), "{}", p.name);
                // Columns identical, types modulo LowCardinality and codecs.
                let names = |t: &Ddl| t.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
                assert_eq!(names(d), names(p), "{fname}: columns of {}", p.name);
                for (dc, pc) in d.columns.iter().zip(&p.columns) {
                    assert_eq!(base_type(&dc.ty), pc.ty, "{fname}: {}.{}", p.name, pc.name);
                    assert_eq!(dc.default, pc.default, "{fname}: {}.{}", p.name, pc.name);
                    assert_eq!(pc.codec, None);
                    let low = dc.ty.first() == Some(&word("LowCardinality"));
                    let want_low = flavor.modern && pc.ty == [word("String")] && LOW.contains(&pc.name.as_str());
                    assert_eq!(low, want_low, "{fname}: {}.{} is {}", p.name, pc.name, text(&dc.ty));
                    let want_codec = (flavor.modern && pc.name == "sample").then(|| tokens("ZSTD(3)"));
                    assert_eq!(dc.codec, want_codec, "{fname}: codec of {}.{}", p.name, pc.name);
                }
                // The engine: the same family; Replicated on a cluster, with one ZooKeeper path
                // per shard and table and the replica macro before the engine's own arguments.
                if cluster {
                    assert_eq!(
                        d.engine.as_deref(),
                        Some(format!("Replicated{engine}").as_str()),
                        "{fname}: {}",
                        p.name
                    );
                    let path = Tok::Str(format!("/clickhouse/tables/{{shard}}/tf/{}", p.name));
                    assert_eq!(d.engine_args.first(), Some(&vec![path]), "{fname}: {}", p.name);
                    assert_eq!(d.engine_args.get(1), Some(&vec![Tok::Str("{replica}".into())]), "{fname}: {}", p.name);
                    assert_eq!(d.engine_args[2..], p.engine_args[..], "{fname}: engine arguments of {}", p.name);
                } else {
                    assert_eq!((&d.engine, &d.engine_args), (&p.engine, &p.engine_args), "{fname}: {}", p.name);
                }
                // TTL on every time-partitioned table of a modern server, on the partitioning
                // column, which is a date or time column of the table.
                match (&d.ttl, &p.partition_by) {
                    (None, None) => {}
                    (None, Some(_)) => {
                        assert!(!flavor.modern, "{fname}: {} is partitioned by time and has no TTL", p.name)
                    }
                    (Some(ttl), Some(part)) => {
                        assert!(flavor.modern, "{fname}: TTL on {}", p.name);
                        let col = match (&part[..], &ttl[..]) {
                            ([Tok::Word(_), Tok::Sym(o), Tok::Word(col), Tok::Sym(c)], _) if o == "(" && c == ")" => {
                                col
                            }
                            _ => panic!("{}: PARTITION BY {} is not f(column)", p.name, text(part)),
                        };
                        let want = tokens(&format!("toDateTime({col}) + INTERVAL {RETENTION} DAY"));
                        assert_eq!(ttl, &want, "{fname}: TTL of {}", p.name);
                        let ty =
                            &p.columns.iter().find(|c| &c.name == col).unwrap_or_else(|| panic!("{}.{col}", p.name)).ty;
                        assert!(ty == &[word("DateTime")] || ty == &[word("Date")], "{}.{col} is {}", p.name, text(ty));
                    }
                    (Some(_), None) => panic!("{fname}: TTL on {}, which is not partitioned by time", p.name),
                }
                if cluster {
                    // A Distributed table over every table, sharded by issue (outcomes, which
                    // have none, by record identity; artifacts by release).
                    let all = find(&ddls, &format!("{}_all", p.name));
                    assert_eq!(all.kind, Kind::Table);
                    assert_eq!(all.as_table.as_deref(), Some(p.name.as_str()), "{fname}");
                    assert!(all.columns.is_empty() && all.ttl.is_none() && all.order_by.is_none());
                    // Columns added to a table later are added to its Distributed table too.
                    assert_eq!(all.altered, p.altered, "{fname}: columns added to {}", all.name);
                    assert_eq!(all.engine.as_deref(), Some("Distributed"), "{fname}: {}", all.name);
                    let args: Vec<String> = all.engine_args.iter().map(|a| text(a)).collect();
                    let keys: &[&str] = match p.name.as_str() {
                        "outcomes" => &["project", "source"],
                        "artifacts" | "release_users_1d" => &["project", "release"],
                        "issue_ranking_runs" => &["window_seconds", "run"],
                        _ => &["project", "issue_id"],
                    };
                    let want = format!("cityHash64 ( {} )", keys.join(" , "));
                    assert_eq!(args, ["main", "tf", p.name.as_str(), want.as_str()], "{fname}");
                    for &key in keys {
                        let c = p.columns.iter().find(|c| c.name == key);
                        let want = match key {
                            "window_seconds" => "UInt32",
                            "run" => "UInt64",
                            _ => "String",
                        };
                        assert_eq!(c.map(|c| &c.ty[..]), Some(&[word(want)][..]), "{}.{key}", p.name);
                    }
                }
            }
        }
    }

    #[test]
    fn views_read_and_feed_tables_declared_before_them() {
        for (fname, flavor) in flavours() {
            let ddls = parsed(&flavor);
            for (i, d) in ddls.iter().enumerate() {
                let before = &ddls[..i];
                // Every `tf.x` a view names is an object declared before it, and a local table.
                let named: Vec<String> = d
                    .select
                    .windows(3)
                    .filter(|w| w[0] == word("tf") && w[1] == sym("."))
                    .map(|w| w[2].to_string())
                    .chain(d.to.clone())
                    .collect();
                assert!(d.kind == Kind::Table || !named.is_empty(), "{fname}: {} reads nothing", d.name);
                for n in named {
                    let src =
                        before.iter().find(|b| b.name == n).unwrap_or_else(|| panic!("{fname}: {} names {n}", d.name));
                    assert!(
                        src.kind == Kind::Table && src.engine.as_deref() != Some("Distributed"),
                        "{fname}: {}",
                        d.name
                    );
                }
            }
        }
    }

    #[test]
    fn retention_days_reach_the_ttl() {
        for days in [1, 7, 400] {
            let ddls = parsed(&Flavor { modern: true, cluster: None, retention_days: days });
            let ttls: Vec<&Vec<Tok>> = ddls.iter().filter_map(|d| d.ttl.as_ref()).collect();
            assert_eq!(ttls.len(), 15);
            assert!(ttls
                .iter()
                .all(|t| t[t.len() - 3..] == [word("INTERVAL"), Tok::Num(days.to_string()), word("DAY")]));
        }
        // A table's SETTINGS come last (after TTL), as ClickHouse's grammar wants them.
        let flavor = Flavor { modern: true, cluster: None, retention_days: 7 };
        let tables: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|m| statements(m.sql, "tf"))
            .flat_map(|st| flavored(&st, "tf", &flavor))
            .filter(|s| s.starts_with("CREATE TABLE") && s.contains("\nSETTINGS "))
            .collect();
        assert!(!tables.is_empty());
        for t in &tables {
            let (ttl, settings) = (t.find("\nTTL ").unwrap(), t.find("\nSETTINGS ").unwrap());
            assert!(ttl < settings && !t[settings..].contains("TTL"), "{t}");
        }
    }

    /// A fresh database on the test ClickHouse (`TRACEFOLD_TEST_CLICKHOUSE_URL`, default
    /// `http://127.0.0.1:8123`), dropped when the value is.
    struct ScratchDb(tracefold_runtime::config::ClickHouseConfig);

    impl Drop for ScratchDb {
        fn drop(&mut self) {
            let (client, db) = (client(&self.0), self.0.database.clone());
            // Drop cannot await: a runtime of its own, on a thread of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let _ = rt.block_on(client.query(&format!("DROP DATABASE IF EXISTS {db}")).execute());
            })
            .join();
        }
    }

    #[derive(clickhouse::Row, serde::Deserialize)]
    struct TableRow {
        name: String,
        engine: String,
        engine_full: String,
        partition_key: String,
        sorting_key: String,
    }

    #[derive(clickhouse::Row, serde::Deserialize)]
    struct ColumnRow {
        table: String,
        name: String,
        #[serde(rename = "type")]
        ty: String,
        default_kind: String,
        default_expression: String,
    }

    /// `DateTime('Etc/UTC')` -> `DateTime`: a view's column carries the time zone of the
    /// function that made it.
    fn without_time_zone(ty: &[Tok]) -> Vec<Tok> {
        match ty {
            [Tok::Word(w), Tok::Sym(o), Tok::Str(_), Tok::Sym(c)] if w == "DateTime" && o == "(" && c == ")" => {
                vec![word("DateTime")]
            }
            _ => ty.to_vec(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clickhouse_creates_exactly_what_the_single_node_schema_declares() {
        let cfg = crate::testdb::scratch("migrate");
        let scratch = ScratchDb(cfg.clone());
        let report = migrate(&scratch.0, |_, _| {}).await.unwrap_or_else(|e| {
            panic!("ClickHouse at {} is needed for this test (scripts/clickhouse-local.sh start): {e:#}", cfg.url)
        });
        assert_eq!(report.applied, MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>());
        let flavor = Flavor::for_version(&report.server_version, None, 90);
        // What the server runs is what is checked against it: the tests run on 18.16.
        let rendered: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|m| statements(m.sql, "tf"))
            .flat_map(|st| flavored(&st, "tf", &flavor))
            .filter(|s| !is_backfill(s))
            .collect();
        let declared = declare(rendered.iter().map(String::as_str));
        let ch = client(&cfg);
        let tables: Vec<TableRow> = ch
            .query(
                "SELECT name, engine, engine_full, partition_key, sorting_key FROM system.tables \
                 WHERE database = ? AND name != 'schema_migrations' ORDER BY name",
            )
            .bind(cfg.database.as_str())
            .fetch_all()
            .await
            .unwrap();
        let columns: Vec<ColumnRow> = ch
            .query(
                // In declaration order (18.16 has no `position` column to sort by).
                "SELECT table, name, type, default_kind, default_expression FROM system.columns WHERE database = ?",
            )
            .bind(cfg.database.as_str())
            .fetch_all()
            .await
            .unwrap_or_else(|e| panic!("system.columns: {e}"));
        let mut names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), names, "exactly the declared objects");
        let columns_of = |table: &str| -> Vec<Column> {
            columns
                .iter()
                .filter(|c| c.table == table)
                .map(|c| Column {
                    name: c.name.clone(),
                    ty: tokens(&c.ty),
                    default: (!c.default_kind.is_empty()).then(|| {
                        assert_eq!(c.default_kind, "DEFAULT", "{table}.{}", c.name);
                        tokens(&c.default_expression)
                    }),
                    codec: None,
                })
                .collect()
        };
        for d in &declared {
            let t = tables.iter().find(|t| t.name == d.name).unwrap();
            match d.kind {
                Kind::MaterializedView => {
                    assert_eq!(t.engine, "MaterializedView", "{}", d.name);
                    // Its columns are the target's (by name, so that no target column is
                    // silently filled with defaults), of the same types.
                    let target = d.to.as_deref().unwrap();
                    let strip = |cs: Vec<Column>| -> Vec<(String, Vec<Tok>)> {
                        let mut v: Vec<_> = cs.into_iter().map(|c| (c.name, without_time_zone(&c.ty))).collect();
                        v.sort();
                        v
                    };
                    assert_eq!(strip(columns_of(&d.name)), strip(columns_of(target)), "{} -> {target}", d.name);
                }
                Kind::View => assert_eq!(t.engine, "View", "{}", d.name),
                Kind::Table => {
                    assert_eq!(Some(&t.engine), d.engine.as_ref(), "{}", d.name);
                    let mut reported = Ddl::new(Kind::Table, d.name.clone(), None);
                    let mut c = Cursor {
                        toks: tokens(&format!("ENGINE = {}", t.engine_full)),
                        i: 0,
                        sql: t.engine_full.clone(),
                    };
                    engine_and_clauses(&mut c, &mut reported);
                    let args = |a: &[Vec<Tok>]| a.iter().map(|x| unwrap_parens(x)).collect::<Vec<_>>();
                    assert_eq!(args(&reported.engine_args), args(&d.engine_args), "engine arguments of {}", d.name);
                    assert_eq!(reported.partition_by, d.partition_by, "PARTITION BY of {}", d.name);
                    assert_eq!(reported.order_by, d.order_by, "ORDER BY of {}", d.name);
                    assert_eq!(reported.ttl, d.ttl, "TTL of {}", d.name);
                    // ClickHouse reports the default granularity of the tables that declare none.
                    let default = tokens("index_granularity = 8192");
                    assert_eq!(
                        reported.settings.as_ref().unwrap_or(&default),
                        d.settings.as_ref().unwrap_or(&default),
                        "SETTINGS of {}",
                        d.name
                    );
                    let part = d.partition_by.clone().unwrap_or_default();
                    assert_eq!(tokens(&t.partition_key), part, "partition key of {}", d.name);
                    assert_eq!(
                        tokens(&t.sorting_key),
                        unwrap_parens(d.order_by.as_ref().unwrap()),
                        "sorting key of {}",
                        d.name
                    );
                    assert_eq!(columns_of(&d.name), d.columns, "columns of {}", d.name);
                }
            }
        }
        // Idempotent: a second run applies nothing and changes nothing.
        let again = migrate(&cfg, |_, _| {}).await.unwrap();
        assert!(again.applied.is_empty());
        assert_eq!(again.skipped, report.applied);
    }

    #[test]
    fn alters_add_columns_idempotently_in_every_flavour() {
        let st = "ALTER TABLE tf.aggregates ADD COLUMN IF NOT EXISTS b Nested(k String, n UInt64)";
        assert_eq!(added_column(st, "tf"), Some(("aggregates", "b")));
        assert_eq!(added_column("ALTER TABLE tf.x ON CLUSTER c ADD COLUMN y UInt8", "tf"), Some(("x", "y")));
        assert_eq!(added_column("CREATE TABLE IF NOT EXISTS tf.x (y UInt8)", "tf"), None);
        let [(_, plain), (_, modern), (_, cluster), (_, modern_cluster)] = flavours();
        // Servers before 19 have no IF NOT EXISTS here: the runner checks the column instead.
        assert_eq!(flavored(st, "tf", &plain), [st.replace(" IF NOT EXISTS", "")]);
        assert_eq!(flavored(st, "tf", &modern), [st]);
        assert_eq!(
            flavored(st, "tf", &cluster),
            [
                "ALTER TABLE tf.aggregates ON CLUSTER main ADD COLUMN b Nested(k String, n UInt64)",
                "ALTER TABLE tf.aggregates_all ON CLUSTER main ADD COLUMN b Nested(k String, n UInt64)"
            ]
        );
        assert_eq!(
            flavored(st, "tf", &modern_cluster)[1],
            "ALTER TABLE tf.aggregates_all ON CLUSTER main ADD COLUMN IF NOT EXISTS b Nested(k String, n UInt64)"
        );
        let (_, _, cols) = parse_alter(st);
        assert_eq!(
            cols.iter().map(|c| (c.name.as_str(), text(&c.ty))).collect::<Vec<_>>(),
            [("b.k", "Array ( String )".to_owned()), ("b.n", "Array ( UInt64 )".to_owned())]
        );
    }

    #[test]
    fn drops_remove_a_view_in_every_flavour() {
        let st = "DROP TABLE IF EXISTS tf.issue_users_1d_mv";
        assert!(is_drop(st) && !is_backfill(st) && !is_alter(st));
        let [(_, plain), (_, modern), (_, cluster), (_, modern_cluster)] = flavours();
        assert_eq!(flavored(st, "tf", &plain), [st]);
        assert_eq!(flavored(st, "tf", &modern), [st]);
        // On every node; a view has no Distributed table to drop.
        let on_cluster = "DROP TABLE IF EXISTS tf.issue_users_1d_mv ON CLUSTER main";
        assert_eq!(flavored(st, "tf", &cluster), [on_cluster]);
        assert_eq!(flavored(st, "tf", &modern_cluster), [on_cluster]);
        assert_eq!(parse_drop(on_cluster), ("issue_users_1d_mv".to_owned(), Some("main".to_owned())));
        // Every flavour: the table `issue_users_1d` stays, its view is gone, and no other
        // view is dropped.
        for (fname, flavor) in flavours() {
            let ddls = parsed(&flavor);
            assert!(ddls.iter().any(|d| d.name == "issue_users_1d" && d.kind == Kind::Table), "{fname}");
            let views: Vec<&str> =
                ddls.iter().filter(|d| d.kind == Kind::MaterializedView).map(|d| d.name.as_str()).collect();
            assert!(!views.contains(&"issue_users_1d_mv"), "{fname}");
            assert_eq!(views.len(), 10, "{fname}: {views:?}");
            assert!(ddls.iter().all(|d| d.to.as_deref() != Some("issue_users_1d")), "{fname}: nothing feeds it");
        }
    }

    /// A cluster name is formatted into every statement (`ON CLUSTER name`, `Distributed(name,
    /// ...)`): one that is not an identifier is refused, naming `--cluster`, before ClickHouse
    /// is asked anything.
    #[tokio::test]
    async fn a_cluster_name_that_is_not_an_identifier_is_refused_before_any_statement() {
        let ch = ClickHouseConfig { url: "http://127.0.0.1:1".into(), ..ClickHouseConfig::default() };
        for bad in ["my-cluster", "c ON CLUSTER d", "", "c; DROP DATABASE x"] {
            let e = migrate_with(&ch, Some(bad.into()), 90, |_, _| {}).await.unwrap_err();
            assert!(matches!(&e, Error::Identifier { what: "--cluster", value } if value == bad), "{bad:?}: {e}");
        }
        assert!(check_names("tracefold", Some("prod_1")).is_ok());
        assert!(matches!(check_names("my-db", None), Err(Error::Identifier { what: "clickhouse.database", .. })));
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
                assert!(st.contains("IF NOT EXISTS") || is_backfill(&st) || is_drop(&st), "not idempotent: {st}");
                assert!(!st.contains("{db}"));
            }
        }
    }

    /// A backfill fills a table its own migration creates, reads tables declared before it, and
    /// keeps only states that a row counted twice leaves as they are (a re-run, or a row both
    /// the new view and the backfill saw); on a cluster it reads and writes the Distributed
    /// tables.
    #[test]
    fn backfills_fill_their_own_migration_s_tables_with_idempotent_states() {
        let mut seen = 0;
        for m in MIGRATIONS {
            let stmts = statements(m.sql, "tf");
            for (i, st) in stmts.iter().enumerate().filter(|(_, st)| is_backfill(st)) {
                seen += 1;
                let toks = tokens(st);
                assert_eq!(toks[..4], [word("INSERT"), word("INTO"), word("tf"), sym(".")], "{st}");
                let target = toks[4].to_string();
                let created = stmts[..i]
                    .iter()
                    .filter(|s| !is_backfill(s) && !is_alter(s) && !is_drop(s))
                    .map(|s| parse_ddl(s))
                    .any(|d| d.kind == Kind::Table && d.name == target);
                assert!(created, "{st}: {target} is not created earlier in {}", m.name);
                let states: Vec<&Tok> =
                    toks.iter().filter(|t| matches!(t, Tok::Word(w) if w.ends_with("State"))).collect();
                // A backfill either builds states (the functions below), or copies the state
                // columns of another sketch table row by row (0012: streamed, not grouped), which
                // the target's merges union as they union any state: idempotent as well.
                // A copy: state columns selected bare (no function applied, not after `(`), and
                // no GROUP BY (which would merge them with a function the list above names).
                let bare_state = |w: &[Tok]| matches!(&w[1], Tok::Word(c) if c.ends_with("_state")) && w[0] != sym("(");
                let copies_states = toks.windows(2).any(bare_state)
                    && !toks.windows(2).any(|w| w[0] == word("GROUP") && w[1] == word("BY"));
                assert!(!states.is_empty() || copies_states, "{st}");
                for s in states {
                    // (`uniqCombinedState`: a set of hashes, or a HyperLogLog of their maximum
                    // ranks; a hash seen twice changes neither. `uniqCombinedMergeState`: the
                    // union of such states, as idempotent.)
                    let ok = [
                        "argMinState",
                        "argMaxState",
                        "minState",
                        "maxState",
                        "uniqExactState",
                        "uniqCombinedState",
                        "uniqCombinedMergeState",
                    ];
                    assert!(ok.contains(&s.to_string().as_str()), "{st}: {s} is not idempotent");
                }
                for (fname, flavor) in flavours() {
                    let out = flavored(st, "tf", &flavor);
                    assert_eq!(out.len(), 1, "{fname}");
                    let names: Vec<String> = tokens(&out[0])
                        .windows(3)
                        .filter(|w| w[0] == word("tf") && w[1] == sym("."))
                        .map(|w| w[2].to_string())
                        .collect();
                    assert!(names.len() >= 2, "{fname}: {}", out[0]);
                    assert!(
                        names.iter().all(|n| n.ends_with("_all") == flavor.cluster.is_some()),
                        "{fname}: {}",
                        out[0]
                    );
                    assert!(!out[0].contains("ON CLUSTER"), "{fname}: {}", out[0]);
                }
            }
        }
        assert_eq!(seen, 4, "the backfills of migrations 0008, 0010 and 0012");
    }

    /// `tracefold migrate` run several times at once (a Job and an init container, two
    /// operators): each ends without an error and the schema is whole. On 18.16, which lacks
    /// `ADD COLUMN IF NOT EXISTS`, two runs that both found 0009's column missing both send the
    /// `ALTER`, and ClickHouse refuses the second ("column with this name already exists").
    /// A race: before the fix, 20 rounds of 6 runs hit it in most runs of this test.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_runs_each_succeed() {
        for round in 0..20 {
            let cfg = crate::testdb::scratch("concurrent");
            let scratch = ScratchDb(cfg.clone());
            apply(&scratch.0, None, 90, &MIGRATIONS[..8], |_, _| {}).await.unwrap_or_else(|e| {
                panic!("ClickHouse at {} is needed for this test (scripts/clickhouse-local.sh start): {e:#}", cfg.url)
            });
            let runs: Vec<_> = (0..6)
                .map(|_| {
                    let cfg = cfg.clone();
                    tokio::spawn(async move { apply(&cfg, None, 90, &MIGRATIONS[..9], |_, _| {}).await })
                })
                .collect();
            for r in runs {
                let r = r.await.unwrap();
                assert!(r.is_ok(), "round {round}: {:#}", error_chain(r.unwrap_err()));
            }
            let again = migrate(&cfg, |_, _| {}).await.unwrap();
            assert_eq!(again.skipped, (1..=9).collect::<Vec<u32>>(), "round {round}");
        }
    }

    /// An error with its sources, for a failure message.
    fn error_chain(e: Error) -> String {
        let mut out = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            out.push_str(&format!(": {s}"));
            src = s.source();
        }
        out
    }

    /// A database made by an older version (migrations 1 to 6, with data) upgrades: the new
    /// table is backfilled from the rows stored before, and rows after it are counted by the
    /// view.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_database_upgrades_and_backfills_the_first_release() {
        let cfg = crate::testdb::scratch("upgrade");
        let scratch = ScratchDb(cfg.clone());
        let old = apply(&scratch.0, None, 90, &MIGRATIONS[..6], |_, _| {}).await.unwrap_or_else(|e| {
            panic!("ClickHouse at {} is needed for this test (scripts/clickhouse-local.sh start): {e:#}", cfg.url)
        });
        assert_eq!(old.applied, [1, 2, 3, 4, 5, 6]);
        let ch = client(&cfg);
        let db = cfg.database.as_str();
        let insert = |rows: &str| {
            format!(
                "INSERT INTO {db}.aggregates (project, issue_id, minute, release, environment, count, first_seen, last_seen) VALUES {rows}"
            )
        };
        // Issue a: first seen in 1.0 (a later row of 2.0 does not change it); b: its earliest
        // row arrives after an earlier-inserted later one; both have rows before the upgrade.
        ch.query(&insert(
            "('p', 'a', '2026-01-01 10:00:00', '2.0', 'prod', 1, '2026-01-01 10:00:05', '2026-01-01 10:00:05'),              ('p', 'a', '2026-01-01 09:00:00', '1.0', 'prod', 1, '2026-01-01 09:00:30', '2026-01-01 09:00:30'),              ('p', 'b', '2026-01-02 09:00:00', 'é-🚀', 'prod', 2, '2026-01-02 09:00:01', '2026-01-02 09:00:09')",
        ))
        .execute()
        .await
        .unwrap();
        let with_users = |rows: &str| {
            format!(
                "INSERT INTO {db}.aggregates (project, issue_id, minute, release, count, users, first_seen, last_seen) VALUES {rows}"
            )
        };
        ch.query(&with_users(
            "('p', 'a', '2026-01-01 11:00:00', '1.0', 2, [7, 8], '2026-01-01 11:00:00', '2026-01-01 11:00:00')",
        ))
        .execute()
        .await
        .unwrap();
        // Migration 9 half-applied before (its column added, nothing else recorded): the
        // re-run skips the column (18.16 has no ADD COLUMN IF NOT EXISTS) and does the rest.
        let flavor = Flavor::for_version(&old.server_version, None, 90);
        let nine = MIGRATIONS.iter().find(|m| m.version == 9).unwrap();
        for st in statements(nine.sql, db).iter().filter(|s| is_alter(s)).flat_map(|s| flavored(s, db, &flavor)) {
            ch.query(&st).execute().await.unwrap();
        }
        let new = migrate(&cfg, |_, _| {}).await.unwrap();
        assert_eq!(new.applied, [7, 8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(new.skipped, [1, 2, 3, 4, 5, 6]);
        ch.query(&insert(
            "('p', 'b', '2026-01-01 08:00:00', '早', 'prod', 1, '2026-01-01 08:00:10', '2026-01-01 08:00:10'),              ('p', 'c', '2026-01-03 08:00:00', '3.0', 'prod', 1, '2026-01-03 08:00:10', '2026-01-03 08:00:10')",
        ))
        .execute()
        .await
        .unwrap();
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct R {
            issue_id: String,
            release: String,
        }
        let read = || async {
            ch.query(&format!(
                "SELECT issue_id, argMinMerge(release_state) AS release FROM {db}.issue_first_release                  GROUP BY issue_id ORDER BY issue_id"
            ))
            .fetch_all::<R>()
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.issue_id, r.release))
            .collect::<Vec<_>>()
        };
        let want = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        assert_eq!(read().await, want(&[("a", "1.0"), ("b", "早"), ("c", "3.0")]));
        // A re-run of the backfill (a half-applied migration run again) changes nothing.
        let eight = MIGRATIONS.iter().find(|m| m.version == 8).unwrap();
        for st in statements(eight.sql, db).into_iter().filter(|s| is_backfill(s)) {
            ch.query(&st).execute().await.unwrap();
        }
        assert_eq!(read().await, want(&[("a", "1.0"), ("b", "早"), ("c", "3.0")]));

        // Users per issue and day, and per release and day: the row from before the upgrade
        // (users 7, 8) backfilled, the later one (8, 9) counted by the views.
        ch.query(&with_users(
            "('p', 'a', '2026-01-01 12:00:00', '1.0', 2, [8, 9], '2026-01-01 12:00:00', '2026-01-01 12:00:00')",
        ))
        .execute()
        .await
        .unwrap();
        let ch_ref = &ch;
        let users_of = |table: &'static str| async move {
            ch_ref.query(&format!(
                "SELECT concat(issue_id, ' ', toString(day), ' ', toString(uniqCombinedMerge(users_state))) FROM {db}.{table} \
                 GROUP BY issue_id, day ORDER BY issue_id, day"
            ))
            .fetch_all::<String>()
            .await
            .unwrap()
        };
        let releases = || async {
            ch.query(&format!(
                "SELECT concat(release, ' ', toString(day), ' ', toString(uniqCombinedMerge(users_state))) FROM {db}.release_users_1d \
                 GROUP BY release, day ORDER BY release, day"
            ))
            .fetch_all::<String>()
            .await
            .unwrap()
        };
        let want_users = ["a 2026-01-01 3"];
        let want_releases = ["1.0 2026-01-01 3"];
        // What queries read (0012): backfilled from `issue_users_1d` (user 7 of the row before
        // the upgrade reaches it only so) and fed by its own view since.
        assert_eq!(users_of("issue_users_1d_v2").await, want_users);
        assert_eq!(releases().await, want_releases);
        // `issue_users_1d` is no longer fed (0013): it holds what 0010's backfill put there
        // (users 7, 8), not the row inserted after the upgrade; its view is gone, the table stays.
        assert_eq!(users_of("issue_users_1d").await, ["a 2026-01-01 2"]);
        let objects = || async {
            ch.query("SELECT name FROM system.tables WHERE database = ? AND name LIKE 'issue_users_1d%' ORDER BY name")
                .bind(db)
                .fetch_all::<String>()
                .await
                .unwrap()
        };
        let want_objects = ["issue_users_1d", "issue_users_1d_v2", "issue_users_1d_v2_mv"];
        assert_eq!(objects().await, want_objects);
        // A re-run of 0013 (half-applied, run again) finds nothing to drop.
        let thirteen = MIGRATIONS.iter().find(|m| m.version == 13).unwrap();
        for st in statements(thirteen.sql, db).iter().flat_map(|s| flavored(s, db, &flavor)) {
            ch.query(&st).execute().await.unwrap();
        }
        assert_eq!(objects().await, want_objects);
        // A re-run of 0010's backfill (what a rollback to a release before 0012 runs, with the
        // view of 0010 again) brings `issue_users_1d` up to date from the base table, and
        // changes nothing where the states were complete.
        let ten = MIGRATIONS.iter().find(|m| m.version == 10).unwrap();
        for st in statements(ten.sql, db).into_iter().filter(|s| is_backfill(s)) {
            ch.query(&st).execute().await.unwrap();
        }
        assert_eq!(users_of("issue_users_1d").await, want_users);
        assert_eq!(releases().await, want_releases);
        // A re-run of 0012's backfill changes nothing.
        let twelve = MIGRATIONS.iter().find(|m| m.version == 12).unwrap();
        for st in statements(twelve.sql, db).into_iter().filter(|s| is_backfill(s)) {
            ch.query(&st).execute().await.unwrap();
        }
        assert_eq!(users_of("issue_users_1d_v2").await, want_users);

        // Rows from before the upgrade have an empty breakdown and add nothing to the
        // breakdown table; rows after it do, summed by hour, key and value.
        ch.query(&format!(
            "INSERT INTO {db}.aggregates (project, issue_id, minute, count, first_seen, last_seen, \
             breakdown.key, breakdown.value, breakdown.count) VALUES \
             ('p', 'a', '2026-01-04 08:01:00', 3, '2026-01-04 08:01:00', '2026-01-04 08:01:00', \
              ['browser', 'url', 'browser'], ['Chrome 120', '/日本', 'Firefox 121'], [2, 3, 1]), \
             ('p', 'a', '2026-01-04 08:59:00', 2, '2026-01-04 08:59:00', '2026-01-04 08:59:00', \
              ['browser'], ['Chrome 120'], [2])"
        ))
        .execute()
        .await
        .unwrap();
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct B {
            hour: u32,
            key: String,
            value: String,
            count: u64,
        }
        let rows: Vec<(u32, String, String, u64)> = ch
            .query(&format!(
                "SELECT toUInt32(hour) AS hour, key, value, sum(count) AS count FROM {db}.issue_breakdown_1h \
                 GROUP BY hour, key, value ORDER BY hour, key, value"
            ))
            .fetch_all::<B>()
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.hour, r.key, r.value, r.count))
            .collect();
        let hour = 1_767_513_600; // 2026-01-04 08:00:00 UTC
        assert_eq!(
            rows,
            [
                (hour, "browser".into(), "Chrome 120".into(), 4),
                (hour, "browser".into(), "Firefox 121".into(), 1),
                (hour, "url".into(), "/日本".into(), 3),
            ]
        );
    }
}
