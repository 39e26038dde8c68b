//! The server registry and the per-database context.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use syncgate_auth::{Authenticator, GuestConfig};
use syncgate_storage::{DatabaseStore, Store};
use tokio::sync::watch;

use crate::config::{validate_db_name, DbConfig, ServerConfig};
use crate::error::{Error, Result};

/// Counters of one database, exported as Prometheus metrics.
#[derive(Debug, Default)]
pub struct DbMetrics {
    /// Open longpoll/continuous/eventsource feeds.
    pub feeds_active: AtomicI64,
    /// Document revisions written.
    pub docs_written: AtomicU64,
}

/// One database: its store, authenticator and settings. Both ports' handlers run against it.
pub struct Database {
    pub name: String,
    pub config: DbConfig,
    pub store: Arc<dyn DatabaseStore>,
    pub auth: Authenticator,
    /// Microseconds since the epoch when this database was opened.
    pub start_time: u64,
    pub metrics: DbMetrics,
    /// Set when the server shuts down: open feeds end.
    pub shutdown: watch::Receiver<bool>,
    /// Whether the server serves TLS (cookie `Secure` default).
    pub tls: bool,
    /// Whether CORS origins are configured for this database (cookie `SameSite` default).
    pub cors_configured: bool,
}

impl Database {
    /// `GET /{db}/`.
    pub fn info(&self) -> Result<Value> {
        let seq = self.store.last_seq();
        Ok(json!({
            "db_name": self.name,
            "doc_count": self.store.doc_count()?,
            "update_seq": seq,
            "committed_update_seq": seq,
            "instance_start_time": self.start_time.to_string(),
            "state": "Online",
        }))
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// All databases of the process.
pub struct Server {
    pub config: ServerConfig,
    store: Store,
    dbs: RwLock<BTreeMap<String, Arc<Database>>>,
    shutdown_tx: watch::Sender<bool>,
}

impl Server {
    /// Opens the store and every configured or previously created database.
    pub fn open(config: ServerConfig) -> Result<Arc<Server>> {
        let store = Store::open(&config.data_dir()).map_err(|e| {
            Error::Internal(format!(
                "cannot open data directory {}: {e}",
                config.data_dir().display()
            ))
        })?;
        let (shutdown_tx, _) = watch::channel(false);
        let server = Arc::new(Server {
            config,
            store,
            dbs: RwLock::new(BTreeMap::new()),
            shutdown_tx,
        });
        for (name, cfg) in server.store.registered_databases()? {
            let cfg: DbConfig = serde_json::from_slice(&cfg).unwrap_or_default();
            server.open_db(&name, cfg)?;
        }
        for (name, cfg) in server.config.databases.clone() {
            server.open_db(&name, cfg)?;
        }
        Ok(server)
    }

    fn open_db(&self, name: &str, config: DbConfig) -> Result<Arc<Database>> {
        let store: Arc<dyn DatabaseStore> = self.store.database(name)?;
        let guest = config.guest.clone().unwrap_or_default();
        let guest = GuestConfig {
            disabled: guest.disabled.unwrap_or(true),
            admin_channels: guest.admin_channels,
        };
        let cors_configured = config.cors.as_ref().is_some_and(|c| !c.origin.is_empty())
            || self
                .config
                .cors
                .as_ref()
                .is_some_and(|c| !c.origin.is_empty());
        let db = Arc::new(Database {
            name: name.to_string(),
            auth: Authenticator::new(store.clone(), guest),
            store,
            config,
            start_time: now_micros(),
            metrics: DbMetrics::default(),
            shutdown: self.shutdown_tx.subscribe(),
            tls: self.config.tls(),
            cors_configured,
        });
        self.dbs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), db.clone());
        Ok(db)
    }

    pub fn db(&self, name: &str) -> Option<Arc<Database>> {
        self.dbs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn db_names(&self) -> Vec<String> {
        self.dbs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub fn databases(&self) -> Vec<Arc<Database>> {
        self.dbs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Admin `PUT /{db}/`: creates a database with default settings.
    pub fn create_db(&self, name: &str) -> Result<Arc<Database>> {
        validate_db_name(name).map_err(|e| Error::BadRequest(e.0))?;
        if self.db(name).is_some() {
            return Err(Error::PreconditionFailed(format!(
                "Duplicate database name \"{name}\""
            )));
        }
        let cfg = DbConfig::default();
        self.store
            .register_database(name, &serde_json::to_vec(&cfg).unwrap_or_default())?;
        self.open_db(name, cfg)
    }

    /// Admin `DELETE /{db}/`: removes a database and its data.
    pub fn delete_db(&self, name: &str) -> Result<()> {
        let removed = self
            .dbs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if removed.is_none() {
            return Err(Error::not_found(format!("no such database \"{name}\"")));
        }
        self.store.drop_database(name)?;
        Ok(())
    }

    /// Tells open feeds to end.
    pub fn begin_shutdown(&self) {
        self.shutdown_tx.send_replace(true);
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown_tx.borrow()
    }

    pub fn flush(&self) -> Result<()> {
        Ok(self.store.flush()?)
    }

    pub fn store_size(&self) -> u64 {
        self.store.size_on_disk()
    }
}

impl Database {
    /// Admin `_compact`: runs on a blocking thread (it scans the whole database) and logs
    /// what it removed.
    pub async fn compact(&self) -> Result<syncgate_storage::CompactStats> {
        let store = self.store.clone();
        let stats = tokio::task::spawn_blocking(move || store.compact())
            .await
            .map_err(|e| Error::Internal(format!("compaction task failed: {e}")))??;
        tracing::info!(db = %self.name, bodies = stats.bodies_removed, attachments = stats.attachments_removed, "compacted");
        Ok(stats)
    }

    pub(crate) fn note_written(&self, n: usize) {
        self.metrics
            .docs_written
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}
