//! The schema: created and migrated at open, in one transaction under an advisory lock (nodes
//! starting together wait for each other; the second finds the work done).

use deadpool_postgres::Pool;

use super::{pg_err, pool_err};
use crate::{Result, StorageError};

/// The schema version this build writes and reads.
pub(super) const VERSION: i32 = 2;

/// Key of the transaction-scoped advisory lock taken while the schema is checked.
const LOCK_KEY: i64 = 0x5359_4e43_4741_5445; // "SYNCGATE"

/// Version 1. Every table but the server-wide ones is keyed by the syncgate database name
/// (`db`), so several syncgate databases can share one PostgreSQL database. Ids, names,
/// channels and revisions are `bytea` (any byte, NUL included, ordered bytewise as the
/// embedded store orders them); records are the same encodings the embedded store uses.
const V1: &str = r#"
CREATE TABLE syncgate_server_values (key text PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE syncgate_databases (name text PRIMARY KEY, config bytea NOT NULL);
CREATE TABLE syncgate_counters (db text PRIMARY KEY, last_seq bigint NOT NULL,
    doc_count bigint NOT NULL);
CREATE TABLE syncgate_docs (db text NOT NULL, id bytea NOT NULL, seq bigint NOT NULL,
    meta bytea NOT NULL, PRIMARY KEY (db, id));
CREATE TABLE syncgate_bodies (db text NOT NULL, id bytea NOT NULL, rev bytea NOT NULL,
    body bytea NOT NULL, PRIMARY KEY (db, id, rev));
CREATE TABLE syncgate_changes (db text NOT NULL, seq bigint NOT NULL, superseded bigint,
    entry bytea NOT NULL, PRIMARY KEY (db, seq));
CREATE INDEX syncgate_changes_superseded ON syncgate_changes (db, superseded)
    WHERE superseded IS NOT NULL;
CREATE TABLE syncgate_channels (db text NOT NULL, channel bytea NOT NULL, seq bigint NOT NULL,
    PRIMARY KEY (db, channel, seq));
CREATE TABLE syncgate_attachments (db text NOT NULL, digest bytea NOT NULL,
    data bytea NOT NULL, PRIMARY KEY (db, digest));
CREATE TABLE syncgate_local (db text NOT NULL, id bytea NOT NULL, doc bytea NOT NULL,
    PRIMARY KEY (db, id));
CREATE TABLE syncgate_principals (db text NOT NULL, kind smallint NOT NULL, name bytea NOT NULL,
    record bytea NOT NULL, PRIMARY KEY (db, kind, name));
CREATE TABLE syncgate_grants (db text NOT NULL, kind smallint NOT NULL, name bytea NOT NULL,
    doc bytea NOT NULL, grant_entry bytea NOT NULL, PRIMARY KEY (db, kind, name, doc));
CREATE TABLE syncgate_sessions (db text NOT NULL, key bytea NOT NULL, value bytea NOT NULL,
    PRIMARY KEY (db, key));
CREATE TABLE syncgate_logins (db text NOT NULL, key bytea NOT NULL, value bytea NOT NULL,
    PRIMARY KEY (db, key));
CREATE TABLE syncgate_settings (db text NOT NULL, key bytea NOT NULL, value bytea NOT NULL,
    PRIMARY KEY (db, key));
"#;

/// Version 2: a per-database settings version, moved by every settings write, so nodes learn
/// of a setting (the sync function) changed elsewhere — by notification or by the poll that
/// reads the counters anyway.
const V2: &str =
    "ALTER TABLE syncgate_counters ADD COLUMN settings_version bigint NOT NULL DEFAULT 0";

/// Every table holding one database's rows (what deleting a database clears).
pub(super) const DB_TABLES: &[&str] = &[
    "syncgate_counters",
    "syncgate_docs",
    "syncgate_bodies",
    "syncgate_changes",
    "syncgate_channels",
    "syncgate_attachments",
    "syncgate_local",
    "syncgate_principals",
    "syncgate_grants",
    "syncgate_sessions",
    "syncgate_logins",
    "syncgate_settings",
];

/// Creates or migrates the schema; a schema newer than this build is an error.
pub(super) async fn migrate(pool: &Pool) -> Result<()> {
    let mut client = pool.get().await.map_err(pool_err)?;
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(pg_err)?;
    // no "relation … already exists, skipping" NOTICE in the log at every start
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning; \
         CREATE TABLE IF NOT EXISTS syncgate_schema_version (version integer NOT NULL)",
    )
    .await
    .map_err(pg_err)?;
    let row = tx
        .query_opt("SELECT max(version) FROM syncgate_schema_version", &[])
        .await
        .map_err(pg_err)?;
    let current: Option<i32> = row.and_then(|r| r.get(0));
    match current {
        None | Some(1) => {
            if current.is_none() {
                tx.batch_execute(V1).await.map_err(pg_err)?;
            }
            tx.batch_execute(V2).await.map_err(pg_err)?;
            tx.execute(
                "INSERT INTO syncgate_schema_version (version) VALUES ($1)",
                &[&VERSION],
            )
            .await
            .map_err(pg_err)?;
        }
        Some(v) if v == VERSION => {}
        Some(v) if v > VERSION => {
            return Err(StorageError::Incompatible(format!(
                "the PostgreSQL schema is version {v}, newer than this syncgate understands \
                 ({VERSION}): upgrade syncgate"
            )))
        }
        Some(v) => {
            return Err(StorageError::Incompatible(format!(
                "the PostgreSQL schema is version {v}: no migration from it to {VERSION}"
            )))
        }
    }
    tx.commit().await.map_err(pg_err)
}
