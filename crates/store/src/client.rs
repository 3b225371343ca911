//! Client construction, the server's version, and the checks on identifiers.

use crate::error::{step, Error, Result};
use clickhouse::Client;
use tracefold_runtime::config::ClickHouseConfig;

/// Returns a client for `cfg` (validation off, so that it works on ClickHouse 18.16 too).
/// Queries name the database themselves; [`database_client`] is for inserts, which name only
/// the table.
pub fn client(cfg: &ClickHouseConfig) -> Client {
    Client::default().with_url(&cfg.url).with_user(&cfg.user).with_password(&cfg.password).with_validation(false)
}

/// [`client`] with `cfg.database` as the default database.
///
/// # Errors
/// [`Error::Identifier`] when the database name is not `[A-Za-z0-9_]+`.
pub fn database_client(cfg: &ClickHouseConfig) -> Result<Client> {
    Ok(client(cfg).with_database(ident("clickhouse.database", &cfg.database)?))
}

/// `name` if it is `[A-Za-z0-9_]+` (safe to format into SQL as a database or table name).
///
/// # Errors
/// [`Error::Identifier`] naming `what` otherwise.
pub fn ident<'a>(what: &'static str, name: &'a str) -> Result<&'a str> {
    if !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        Ok(name)
    } else {
        Err(Error::Identifier { what, value: name.to_owned() })
    }
}

/// The database name of queries, checked.
pub(crate) fn db(name: &str) -> Result<&str> {
    ident("clickhouse.database", name)
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct StringRow {
    v: String,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct NowRow {
    now: u32,
}

/// The server's version (`SELECT version()`: `18.16.1`, `24.8.4.13`).
///
/// # Errors
/// When ClickHouse does not answer.
pub async fn server_version(client: &Client) -> Result<String> {
    Ok(client.query("SELECT version() AS v").fetch_one::<StringRow>().await.map_err(step("server version"))?.v)
}

/// Server major version from a version string (`18.16.1` -> 18); 0 when unreadable.
pub fn major_version(version: &str) -> u32 {
    version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0)
}

/// The server's clock, Unix seconds: windows are measured against it, not the caller's.
///
/// # Errors
/// When ClickHouse does not answer.
pub async fn now(client: &Client) -> Result<u32> {
    Ok(client
        .query("SELECT toUInt32(now()) AS now")
        .fetch_one::<NowRow>()
        .await
        .map_err(step("cannot reach ClickHouse"))?
        .now)
}

/// Drops `database` and everything in it (scratch databases of benchmarks and tests).
///
/// # Errors
/// When the name is not an identifier or ClickHouse refuses.
pub async fn drop_database(client: &Client, database: &str) -> Result<()> {
    let db = db(database)?;
    client.query(&format!("DROP DATABASE IF EXISTS {db}")).execute().await.map_err(step(format!("drop database {db}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked() {
        assert_eq!(ident("t", "tracefold_2").unwrap(), "tracefold_2");
        for bad in ["", "a.b", "a-b", "a b", "a;DROP", "ä", "a`"] {
            assert!(matches!(ident("t", bad), Err(Error::Identifier { .. })), "{bad:?}");
        }
    }

    #[test]
    fn major_versions() {
        assert_eq!(major_version("24.8.4.13"), 24);
        assert_eq!(major_version("18.16.1"), 18);
        assert_eq!(major_version("x"), 0);
    }
}
