//! The server registry and the per-database context.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use serde_json::{json, Value};
use syncgate_auth::jwt::{bearer::revoke_stale_grants, code_flow::CodeFlow, JwtAuth};
use syncgate_auth::{AuthSettings, Authenticator, CookieSettings, SameSite};
use syncgate_storage::{DatabaseStore, PgStore, SledOptions, StorageError, Store, StoreServer};
use tokio::sync::watch;

use crate::config::{validate_db_name, DbConfig, ServerConfig};
use crate::error::{Error, Result};
use crate::sync_fn::SyncFunction;

/// Counters of one database, exported as Prometheus metrics.
#[derive(Debug, Default)]
pub struct DbMetrics {
    /// Open longpoll/continuous/eventsource feeds.
    pub feeds_active: AtomicI64,
    /// Document revisions written.
    pub docs_written: AtomicU64,
    /// Refused public-port authentications, by reason (see [`AuthFailure`]).
    pub auth_failures: [AtomicU64; AuthFailure::ALL.len()],
}

/// Why a public-port request was refused authentication (a metric label: bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials and GUEST disabled.
    NoCredentials,
    /// Wrong user name or password (Basic or `POST /_session`).
    Password,
    /// A Bearer token failed a check.
    Token,
    /// A forged, expired or revoked session cookie.
    Session,
    /// Too many failed logins (429).
    Throttled,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 5] = [
        AuthFailure::NoCredentials,
        AuthFailure::Password,
        AuthFailure::Token,
        AuthFailure::Session,
        AuthFailure::Throttled,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::NoCredentials => "no_credentials",
            AuthFailure::Password => "password",
            AuthFailure::Token => "token",
            AuthFailure::Session => "session",
            AuthFailure::Throttled => "throttled",
        }
    }
}

impl DbMetrics {
    pub fn auth_failed(&self, why: AuthFailure) {
        self.auth_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn auth_failures(&self, why: AuthFailure) -> u64 {
        self.auth_failures[why as usize].load(Ordering::Relaxed)
    }
}

/// One database: its store, authenticator and settings. Both ports' handlers run against it.
pub struct Database {
    pub(crate) name: String,
    pub(crate) config: DbConfig,
    pub(crate) store: Arc<dyn DatabaseStore>,
    pub(crate) auth: Authenticator,
    /// Microseconds since the epoch when this database was opened.
    pub(crate) start_time: u64,
    pub(crate) metrics: DbMetrics,
    /// Set when the server shuts down: open feeds end.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The OpenID Connect authorization-code flow (`_oidc*`), when `oidc` is configured.
    pub(crate) code_flow: Option<CodeFlow>,
    /// The sync function; `None` = the default (`channel(doc.channels)`, native).
    pub(crate) sync: RwLock<Option<Arc<SyncFunction>>>,
    /// The config file's sync function as read at startup (what a function set through the
    /// admin API is stored against).
    pub(crate) config_sync: Option<String>,
    /// One `PUT _config/sync` at a time.
    pub(crate) sync_admin: tokio::sync::Mutex<()>,
    /// `_resync` progress.
    pub(crate) resync: crate::sync_fn::admin::Resync,
    /// One compaction at a time (admin `_compact` and the automatic policy).
    pub(crate) compacting: tokio::sync::Mutex<()>,
}

impl Database {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &DbConfig {
        &self.config
    }

    /// Users, roles, sessions and the public port's authentication.
    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    pub fn metrics(&self) -> &DbMetrics {
        &self.metrics
    }

    /// Microseconds since the epoch when this database was opened.
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// The OpenID Connect authorization-code flow, when `oidc` is configured.
    pub fn code_flow(&self) -> Option<&CodeFlow> {
        self.code_flow.as_ref()
    }

    /// The last durable sequence (what `_changes` shows).
    pub fn last_seq(&self) -> u64 {
        self.store.last_seq()
    }

    /// Live documents, for metrics and the startup line.
    pub async fn doc_count(&self) -> Result<u64> {
        Ok(self.store.doc_count().await?)
    }

    /// Document trees, bodies and change entries read from the store (the `docs_read` metric).
    pub fn docs_read(&self) -> u64 {
        self.store.docs_read()
    }

    /// The configured sync function (`None`: the native default).
    pub fn sync_function(&self) -> Option<Arc<SyncFunction>> {
        self.sync.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `GET /{db}/`.
    pub async fn info(&self) -> Result<Value> {
        let seq = self.store.last_seq();
        Ok(json!({
            "db_name": self.name,
            "doc_count": self.store.doc_count().await?,
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

/// How often expired and revoked sessions are collected.
pub const SESSION_GC_INTERVAL: Duration = Duration::from_secs(60);

/// All databases of the process.
pub struct Server {
    pub config: ServerConfig,
    /// The server's store: the registry of databases created at run time, server values, and
    /// the storage of every database that does not have its own (the embedded sled store,
    /// or PostgreSQL when the top-level `server` says so).
    store: Arc<dyn StoreServer>,
    /// The server's secret for hashing session ids (generated at first start, kept in the store).
    session_key: Vec<u8>,
    /// Databases on PostgreSQL: the store each was opened in (its own pool and listener).
    db_stores: RwLock<BTreeMap<String, Arc<dyn StoreServer>>>,
    dbs: RwLock<BTreeMap<String, Arc<Database>>>,
    shutdown_tx: watch::Sender<bool>,
}

impl Server {
    /// Opens the embedded store in the configured data directory and every configured or
    /// previously created database.
    pub async fn open(config: ServerConfig) -> Result<Arc<Server>> {
        if let Some(mut options) = DbConfig::default().postgres(config.server.as_deref()) {
            options.pool_size = 4;
            let store = PgStore::open(&options).await.map_err(|e| match e {
                StorageError::Incompatible(m) => Error::Incompatible(format!("server: {m}")),
                e => Error::Internal(format!("cannot open the PostgreSQL store (server): {e}")),
            })?;
            return Server::with_store(config, Arc::new(store)).await;
        }
        let options = SledOptions {
            cache_bytes: config.cache_mb() << 20,
        };
        let store = Store::open_with(&config.data_dir(), options).map_err(|e| {
            Error::Internal(format!(
                "cannot open data directory {}: {e}",
                config.data_dir().display()
            ))
        })?;
        Server::with_store(config, Arc::new(store)).await
    }

    /// Opens every configured or previously created database in `store`.
    pub async fn with_store(
        config: ServerConfig,
        store: Arc<dyn StoreServer>,
    ) -> Result<Arc<Server>> {
        let (shutdown_tx, _) = watch::channel(false);
        let session_key = session_key(store.as_ref()).await?;
        let server = Arc::new(Server {
            config,
            store,
            session_key,
            db_stores: RwLock::new(BTreeMap::new()),
            dbs: RwLock::new(BTreeMap::new()),
            shutdown_tx,
        });
        for (name, cfg) in server.store.list_databases().await? {
            let cfg: DbConfig = serde_json::from_slice(&cfg).map_err(|e| {
                Error::Internal(format!(
                    "the stored config of database \"{name}\" does not parse: {e}"
                ))
            })?;
            server.open_db(&name, cfg).await?;
        }
        for (name, cfg) in server.config.databases.clone() {
            server.open_db(&name, cfg).await?;
        }
        crate::compaction::spawn(&server).await;
        Ok(server)
    }

    /// The store a database lives in and the session key it hashes with (kept in that store,
    /// so every node serving the database agrees on it).
    async fn store_for(
        &self,
        name: &str,
        config: &DbConfig,
    ) -> Result<(Arc<dyn StoreServer>, Vec<u8>)> {
        let Some(options) = config.postgres(self.config.server.as_deref()) else {
            return Ok((self.store.clone(), self.session_key.clone()));
        };
        let store: Arc<dyn StoreServer> =
            Arc::new(PgStore::open(&options).await.map_err(|e| match e {
                StorageError::Incompatible(m) => {
                    Error::Incompatible(format!("database \"{name}\": {m}"))
                }
                e => Error::Internal(format!(
                    "database \"{name}\": cannot open its PostgreSQL store: {e}"
                )),
            })?);
        let key = session_key(store.as_ref()).await?;
        self.db_stores
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), store.clone());
        Ok((store, key))
    }

    async fn open_db(&self, name: &str, config: DbConfig) -> Result<Arc<Database>> {
        let (server_store, session_key) = self.store_for(name, &config).await?;
        let store: Arc<dyn DatabaseStore> = server_store.open_database(name).await?;
        let cors_configured = match &config.cors {
            Some(c) => !c.origin.is_empty(),
            None => self
                .config
                .cors
                .as_ref()
                .is_some_and(|c| !c.origin.is_empty()),
        };
        let auth = Authenticator::new(
            store.clone(),
            self.auth_settings(name, &config, cors_configured, &session_key),
        );
        let jwt = JwtAuth::new(config.oidc.as_ref(), config.local_jwt.as_ref())
            .map_err(|e| Error::Internal(format!("database \"{name}\": JWT providers: {e}")))?
            .map(Arc::new);
        revoke_stale_grants(auth.principals(), jwt.as_deref()).await?;
        let code_flow = CodeFlow::new(
            name,
            config.oidc.as_ref(),
            jwt.clone(),
            store.clone(),
            session_key.clone(),
        );
        if let Some(jwt) = jwt {
            auth.set_bearer(jwt);
        }
        auth.install_config(&config.roles, &config.users, &config.guest_config())
            .await
            .map_err(|e| {
                Error::Internal(format!(
                    "database \"{name}\": cannot install the config's users and roles: {e}"
                ))
            })?;
        let config_sync = config
            .sync_source()
            .map_err(|e| Error::Internal(format!("database \"{name}\": sync: {e}")))?;
        let source =
            crate::sync_fn::admin::effective_source(name, store.as_ref(), config_sync.clone())
                .await?;
        let sync = match source {
            Some(src) => Some(Arc::new(
                SyncFunction::new(&src, config.javascript_timeout_ms()).map_err(|e| {
                    Error::Internal(format!(
                        "database \"{name}\": the sync function does not compile: {e}"
                    ))
                })?,
            )),
            None => None,
        };
        let db = Arc::new(Database {
            sync: RwLock::new(sync),
            config_sync,
            sync_admin: tokio::sync::Mutex::new(()),
            resync: Default::default(),
            compacting: tokio::sync::Mutex::new(()),
            name: name.to_string(),
            auth,
            store,
            config,
            start_time: now_micros(),
            metrics: DbMetrics::default(),
            shutdown: self.shutdown_tx.subscribe(),
            code_flow,
        });
        self.dbs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), db.clone());
        spawn_session_gc(&db);
        spawn_settings_watch(&db);
        Ok(db)
    }

    /// The authenticator's settings for one database (cookie attributes per SPEC §1).
    fn auth_settings(
        &self,
        name: &str,
        config: &DbConfig,
        cors_configured: bool,
        session_key: &[u8],
    ) -> AuthSettings {
        let secure = config.cookie_secure(self.config.tls());
        let same_site = match config.session_cookie_same_site.as_deref() {
            Some("Strict") => SameSite::Strict,
            Some("None") => SameSite::None,
            Some(_) => SameSite::Lax,
            // cross-site apps (app://obsidian.md, capacitor://localhost) need None, which
            // browsers only accept together with Secure
            None if cors_configured && secure => SameSite::None,
            None => SameSite::Lax,
        };
        AuthSettings {
            disable_password_auth: config.disable_password_auth.unwrap_or(false),
            hash_params: self
                .config
                .password_hash
                .clone()
                .unwrap_or_default()
                .params(),
            cookie: CookieSettings {
                name: config.cookie_name().to_string(),
                path: format!("/{}", name.replace('/', "%2F")),
                secure,
                http_only: config.session_cookie_http_only.unwrap_or(true),
                same_site,
            },
            session_ttl: Duration::from_secs(config.session_ttl()),
            session_key: session_key.to_vec(),
        }
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

    /// The databases whose store cannot serve now, with why (`/_ping` on the metrics port).
    /// One round trip per database on a networked store.
    pub async fn unavailable_databases(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for db in self.databases() {
            if let Err(e) = db.store.health().await {
                out.push((db.name.clone(), e.to_string()));
            }
        }
        out
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
    pub async fn create_db(&self, name: &str) -> Result<Arc<Database>> {
        validate_db_name(name).map_err(|e| Error::BadRequest(e.0))?;
        if self.db(name).is_some() {
            return Err(Error::PreconditionFailed(format!(
                "Duplicate database name \"{name}\""
            )));
        }
        let cfg = DbConfig::default();
        let bytes = serde_json::to_vec(&cfg).map_err(|e| {
            Error::Internal(format!(
                "cannot encode the config of database \"{name}\": {e}"
            ))
        })?;
        self.store.create_database(name, &bytes).await?;
        self.open_db(name, cfg).await
    }

    /// Admin `DELETE /{db}/`: removes a database and its data.
    pub async fn delete_db(&self, name: &str) -> Result<()> {
        let removed = self
            .dbs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if removed.is_none() {
            return Err(Error::not_found(format!("no such database \"{name}\"")));
        }
        let own = self
            .db_stores
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(own) = own {
            own.delete_database(name).await?;
        }
        // the registry entry (and the data, for a database in the server's store)
        self.store.delete_database(name).await?;
        Ok(())
    }

    /// Tells open feeds to end.
    pub fn begin_shutdown(&self) {
        self.shutdown_tx.send_replace(true);
    }

    /// Changes to `true` when the server shuts down.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
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

/// The server's secret for hashing session ids, generated by the first node to need it.
async fn session_key(store: &dyn StoreServer) -> Result<Vec<u8>> {
    Ok(store
        .server_value("session_key", &mut || {
            let mut k = vec![0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut k);
            k
        })
        .await?)
}

/// Collects expired and revoked sessions every [`SESSION_GC_INTERVAL`] until the server shuts
/// down or the database is deleted. Needs a runtime (absent in sync unit tests: then no task).
/// Reloads the sync function when another node changed the database's settings (stores
/// shared by several nodes: [`DatabaseStore::settings_changes`]).
fn spawn_settings_watch(db: &Arc<Database>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(mut changes) = db.store.settings_changes() else {
        return;
    };
    let weak = Arc::downgrade(db);
    let mut shutdown = db.shutdown.clone();
    rt.spawn(async move {
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                _ = shutdown.changed() => break,
            }
            let Some(db) = weak.upgrade() else { break };
            if let Err(e) = db.reload_sync_function().await {
                tracing::warn!(db = %db.name, "reloading the sync function changed on another node: {e}");
            }
        }
    });
}

fn spawn_session_gc(db: &Arc<Database>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(db);
    let mut shutdown = db.shutdown.clone();
    rt.spawn(async move {
        let mut tick = tokio::time::interval(SESSION_GC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            let Some(db) = weak.upgrade() else { break };
            let name = db.name.clone();
            if let Some(flow) = &db.code_flow {
                if let Err(e) = flow
                    .logins()
                    .collect(syncgate_auth::sessions::now_ms())
                    .await
                {
                    tracing::warn!(db = %db.name, "login transaction collection failed: {e}");
                }
            }
            match db.auth.collect_sessions().await {
                Ok(n) if n > 0 => {
                    tracing::debug!(db = %name, removed = n, "sessions collected")
                }
                Err(e) => tracing::warn!(db = %name, "session collection failed: {e}"),
                _ => {}
            }
        }
    });
}

impl Database {
    /// Admin `_compact`: runs on a blocking thread (it scans the whole database) and logs
    /// what it removed.
    pub async fn compact(&self) -> Result<syncgate_storage::CompactStats> {
        let stats = self.compact_quietly().await?;
        tracing::info!(db = %self.name, bodies = stats.bodies_removed, attachments = stats.attachments_removed, "compacted");
        Ok(stats)
    }

    /// Compacts without logging; waits for a compaction already running (admin or
    /// automatic, [`crate::compaction`]) to finish first.
    pub(crate) async fn compact_quietly(&self) -> Result<syncgate_storage::CompactStats> {
        let _one = self.compacting.lock().await;
        Ok(self.store.compact().await?)
    }

    pub(crate) fn note_written(&self, n: usize) {
        self.metrics
            .docs_written
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}
