//! `syncgate migrate`: moves one database from the store its config names (normally the
//! embedded store in `data_dir`) into a PostgreSQL database, with the server stopped. What is
//! carried and what is not: [`syncgate_storage::migrate`].
//!
//! Sessions are kept when the target PostgreSQL database has no session key yet (it takes the
//! source's, so existing cookies keep working) or already has the same one; otherwise they are
//! left behind and users log in again (a session is stored under a keyed hash of its id, which
//! cannot be re-keyed).

use std::sync::Arc;

use syncgate_storage::migrate::{copy_database, CopyStats};
use syncgate_storage::{ChangeNotify, PgOptions, PgStore, StorageError, Store, StoreServer};

use crate::config::{is_postgres_url, DbConfig, ServerConfig};
use crate::error::{Error, Result};

/// What a migration did.
#[derive(Debug, Clone)]
pub struct MigrateReport {
    pub copied: CopyStats,
    /// Sessions were left behind (the target already had another session key).
    pub sessions_dropped: bool,
}

fn open_error(what: &str, e: StorageError) -> Error {
    match e {
        StorageError::Incompatible(m) => Error::Incompatible(format!("{what}: {m}")),
        e => Error::Internal(format!("{what}: {e}")),
    }
}

/// Copies database `name` into the PostgreSQL database at `to` (which must not hold that
/// database yet). `progress` sees the number of documents copied so far.
pub async fn migrate(
    config: &ServerConfig,
    name: &str,
    to: &str,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<MigrateReport> {
    if !is_postgres_url(to) {
        return Err(Error::bad(
            "--to: expected a postgres://USER:PASSWORD@HOST:PORT/DBNAME URL",
        ));
    }
    let db_config: DbConfig = match config.databases.get(name) {
        Some(c) => c.clone(),
        None => {
            return Err(Error::not_found(format!(
                "database \"{name}\" is not in the config file"
            )))
        }
    };
    let source: Arc<dyn StoreServer> = match db_config.postgres(config.server.as_deref()) {
        Some(options) => Arc::new(
            PgStore::open(&options)
                .await
                .map_err(|e| open_error("the source PostgreSQL store", e))?,
        ),
        None => Arc::new(Store::open(&config.data_dir()).map_err(|e| {
            Error::Internal(format!(
                "cannot open data directory {} (is syncgate still running on it?): {e}",
                config.data_dir().display()
            ))
        })?),
    };
    let target = PgStore::open(&PgOptions {
        url: to.to_string(),
        pool_size: 4,
        notify: ChangeNotify::Listen,
    })
    .await
    .map_err(|e| open_error("the target PostgreSQL store", e))?;
    // the target takes the source's session key unless it has one already
    let key = source.server_value("session_key", &mut new_key).await?;
    let target_key = target
        .server_value("session_key", &mut || key.clone())
        .await?;
    let sessions_dropped = target_key != key;
    let src = source.open_database(name).await?;
    let dst = target.open_database(name).await?;
    let settings = [crate::sync_fn::admin::SETTING];
    let copied = copy_database(&*src, &*dst, !sessions_dropped, &settings, progress)
        .await
        .map_err(|e| match e {
            StorageError::Conflict(m) => Error::Conflict(m),
            e => Error::from(e),
        })?;
    source.flush()?;
    Ok(MigrateReport {
        copied,
        sessions_dropped,
    })
}

fn new_key() -> Vec<u8> {
    use rand::RngCore;
    let mut k = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    k
}
