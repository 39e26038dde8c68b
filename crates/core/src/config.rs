//! The JSON config file: typed model, `${VAR}` expansion, strict validation.
//!
//! Loading is three steps: parse JSON (errors give line and column), expand environment
//! variables in string values, deserialize into types that reject unknown keys (errors give the
//! JSON path and the closest known key), then [`ServerConfig::validate`] checks values.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use syncgate_auth::jwt::{config::validate_local_jwt, LocalJwtConfig, OidcConfig};
use syncgate_auth::{ConfigRole, ConfigUser, GuestConfig, HashParams, GUEST};
use syncgate_storage::DEFAULT_CACHE_MB;

/// A config problem, printed as one line by the binary (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

pub const DEFAULT_INTERFACE: &str = "0.0.0.0:4984";
pub const DEFAULT_ADMIN_INTERFACE: &str = "127.0.0.1:4985";
pub const DEFAULT_METRICS_INTERFACE: &str = "127.0.0.1:4986";
pub const DEFAULT_MAX_BODY: u64 = 20 * 1024 * 1024;

/// Top level of `config.json`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub interface: Option<String>,
    #[serde(rename = "adminInterface")]
    pub admin_interface: Option<String>,
    #[serde(rename = "metricsInterface")]
    pub metrics_interface: Option<String>,
    pub data_dir: Option<PathBuf>,
    #[serde(rename = "SSLCert")]
    pub ssl_cert: Option<PathBuf>,
    #[serde(rename = "SSLKey")]
    pub ssl_key: Option<PathBuf>,
    #[serde(rename = "CORS")]
    pub cors: Option<ServerCors>,
    pub logging: Option<LoggingConfig>,
    pub max_request_body_bytes: Option<u64>,
    pub password_hash: Option<PasswordHashConfig>,
    /// Default storage of every database (`"embedded"` or `"postgres://…"`); a database
    /// block's `server` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Bound of the embedded store's page cache, MiB (default [`DEFAULT_CACHE_MB`]).
    pub cache_mb: Option<u64>,
    /// Automatic compaction policy ([`crate::compaction`]).
    pub auto_compact: Option<crate::compaction::AutoCompactConfig>,
    #[serde(default)]
    pub databases: BTreeMap<String, DbConfig>,
}

/// Server-wide CORS, SG style.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerCors {
    #[serde(rename = "Origin", default)]
    pub origin: Vec<String>,
    #[serde(rename = "LoginOrigin", default)]
    pub login_origin: Vec<String>,
    #[serde(rename = "Headers", default)]
    pub headers: Vec<String>,
    #[serde(rename = "MaxAge")]
    pub max_age: Option<u64>,
}

/// Per-database CORS (overrides the server's).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DbCors {
    #[serde(default)]
    pub origin: Vec<String>,
    #[serde(default)]
    pub login_origin: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    pub max_age: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    pub console: Option<ConsoleLogging>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleLogging {
    pub log_level: Option<String>,
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordHashConfig {
    /// Memory in KiB (default 19,456, OWASP's minimum for Argon2id).
    #[serde(default = "default_m_cost")]
    pub memory_kib: u32,
    /// Iterations (default 2).
    #[serde(default = "default_t_cost")]
    pub iterations: u32,
    /// Lanes (default 1).
    #[serde(default = "default_p_cost")]
    pub parallelism: u32,
}

fn default_m_cost() -> u32 {
    19_456
}
fn default_t_cost() -> u32 {
    2
}
fn default_p_cost() -> u32 {
    1
}

impl PasswordHashConfig {
    pub fn params(&self) -> HashParams {
        HashParams {
            memory_kib: self.memory_kib,
            iterations: self.iterations,
            parallelism: self.parallelism,
        }
    }
}

impl Default for PasswordHashConfig {
    fn default() -> Self {
        PasswordHashConfig {
            memory_kib: default_m_cost(),
            iterations: default_t_cost(),
            parallelism: default_p_cost(),
        }
    }
}

/// One database block.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    /// `"embedded"` (sled in `data_dir`, the default) or `"postgres://…"`.
    pub server: Option<String>,
    /// PostgreSQL: most connections this node opens for the database (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
    /// PostgreSQL: how changes made on other nodes are learnt: `"listen"` (default) or `"poll"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_notify: Option<String>,
    /// PostgreSQL with `change_notify: "poll"`: the interval (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval_ms: Option<u64>,
    /// Users created at startup when missing (`GUEST` here is the same as `guest`).
    #[serde(default)]
    pub users: BTreeMap<String, ConfigUser>,
    #[serde(default)]
    pub roles: BTreeMap<String, ConfigRole>,
    pub revs_limit: Option<u64>,
    pub session_cookie_name: Option<String>,
    pub session_cookie_secure: Option<bool>,
    pub session_cookie_http_only: Option<bool>,
    pub session_cookie_same_site: Option<String>,
    pub session_ttl_secs: Option<u64>,
    pub disable_password_auth: Option<bool>,
    pub cors: Option<DbCors>,
    /// OpenID Connect providers (Bearer ID tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcConfig>,
    /// Static-key JWT providers by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_jwt: Option<BTreeMap<String, LocalJwtConfig>>,
    pub guest: Option<GuestBlock>,
    /// The sync function (JavaScript source, or `{"file": path}`); absent or blank = the
    /// default (`channel(doc.channels)`, native, no JS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncSource>,
    /// Bound of one sync-function call, in milliseconds (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub javascript_timeout_ms: Option<u64>,
}

/// Where the sync function's source comes from.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SyncSource {
    /// The JavaScript text itself.
    Source(String),
    /// A `.js` file (relative paths are relative to the working directory).
    File { file: PathBuf },
}

/// `guest` block (same as `users.GUEST`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GuestBlock {
    pub disabled: Option<bool>,
    #[serde(default)]
    pub admin_channels: Vec<String>,
}

impl ServerConfig {
    pub fn interface(&self) -> &str {
        self.interface.as_deref().unwrap_or(DEFAULT_INTERFACE)
    }
    pub fn admin_interface(&self) -> &str {
        self.admin_interface
            .as_deref()
            .unwrap_or(DEFAULT_ADMIN_INTERFACE)
    }
    pub fn metrics_interface(&self) -> &str {
        self.metrics_interface
            .as_deref()
            .unwrap_or(DEFAULT_METRICS_INTERFACE)
    }
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./data"))
    }
    pub fn cache_mb(&self) -> u64 {
        self.cache_mb.unwrap_or(DEFAULT_CACHE_MB)
    }
    pub fn max_body(&self) -> u64 {
        self.max_request_body_bytes.unwrap_or(DEFAULT_MAX_BODY)
    }
    pub fn tls(&self) -> bool {
        self.ssl_cert.is_some()
    }
    pub fn log_level(&self) -> &str {
        self.logging
            .as_ref()
            .and_then(|l| l.console.as_ref())
            .and_then(|c| c.log_level.as_deref())
            .unwrap_or("info")
    }

    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!("{}: cannot read config file: {e}", path.display()))
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses config text; `origin` names the file in messages.
    pub fn parse(text: &str, origin: &str) -> Result<ServerConfig, ConfigError> {
        let mut value: Value = serde_json::from_str(text).map_err(|e| {
            ConfigError(format!(
                "{origin}: invalid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ))
        })?;
        expand_env(&mut value, "$").map_err(|e| ConfigError(format!("{origin}: {}", e.0)))?;
        let cfg: ServerConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError(format!(
                "{origin}: {}",
                describe_serde_error(&path, &e.into_inner().to_string())
            ))
        })?;
        cfg.validate()
            .map_err(|e| ConfigError(format!("{origin}: {}", e.0)))?;
        Ok(cfg)
    }

    /// Checks values that types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, addr) in [
            ("interface", self.interface()),
            ("adminInterface", self.admin_interface()),
            ("metricsInterface", self.metrics_interface()),
        ] {
            parse_addr(addr).map_err(|_| {
                ConfigError(format!("$.{key}: \"{addr}\" is not a valid address (expected host:port, e.g. 127.0.0.1:4985)"))
            })?;
        }
        if self.ssl_cert.is_some() != self.ssl_key.is_some() {
            return err("$.SSLCert and $.SSLKey must be set together");
        }
        for (k, p) in [("SSLCert", &self.ssl_cert), ("SSLKey", &self.ssl_key)] {
            if let Some(p) = p {
                if std::fs::metadata(p).is_err() {
                    return err(format!("$.{k}: cannot read \"{}\"", p.display()));
                }
            }
        }
        let lvl = self.log_level();
        if !["none", "error", "warn", "info", "debug", "trace"].contains(&lvl) {
            return err(format!(
                "$.logging.console.log_level: unknown level \"{lvl}\" (expected none, error, warn, info, debug or trace)"
            ));
        }
        if self.max_body() < 1024 {
            return err("$.max_request_body_bytes: must be at least 1024");
        }
        if !(1..=1 << 20).contains(&self.cache_mb()) {
            return err("$.cache_mb: must be between 1 and 1048576");
        }
        if let Some(ac) = &self.auto_compact {
            ac.validate("$.auto_compact")?;
        }
        if let Some(ph) = &self.password_hash {
            if ph.memory_kib < 8 * ph.parallelism.max(1) || ph.iterations < 1 || ph.parallelism < 1
            {
                return err("$.password_hash: memory_kib must be ≥ 8 × parallelism, iterations and parallelism ≥ 1");
            }
            if ph.memory_kib > 4 * 1024 * 1024 || ph.iterations > 100 || ph.parallelism > 64 {
                return err(
                    "$.password_hash: memory_kib ≤ 4194304, iterations ≤ 100 and parallelism ≤ 64",
                );
            }
        }
        if let Some(s) = &self.server {
            validate_server("$.server", s)?;
        }
        for (name, db) in &self.databases {
            validate_db_name(name)
                .map_err(|e| ConfigError(format!("$.databases.{name}: {}", e.0)))?;
            db.validate(&format!("$.databases.{name}"))?;
            if db.same_site_none() && !db.cookie_secure(self.tls()) {
                return err(format!(
                    "$.databases.{name}.session_cookie_same_site: \"None\" needs a Secure cookie (serve TLS or set session_cookie_secure: true)"
                ));
            }
        }
        Ok(())
    }
}

/// Whether a `server` value names PostgreSQL.
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// `server`: `"embedded"` or a PostgreSQL URL (never echoed: it may hold a password).
fn validate_server(at: &str, s: &str) -> Result<(), ConfigError> {
    if s == "embedded" {
        return Ok(());
    }
    if !is_postgres_url(s) {
        return err(format!(
            "{at}: expected \"embedded\" or a \"postgres://USER:PASSWORD@HOST:PORT/DBNAME\" URL"
        ));
    }
    if let Err(e) = syncgate_storage::pg_store::check_url(s) {
        return err(format!("{at}: {e}"));
    }
    Ok(())
}

/// Parses `host:port` (IPv4, `[IPv6]`, or `localhost`).
pub fn parse_addr(s: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        if let Ok(p) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], p)));
        }
    }
    if let Some(port) = s.strip_prefix(':') {
        if let Ok(p) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([0, 0, 0, 0], p)));
        }
    }
    err(format!("invalid address {s}"))
}

/// Database names: `^[a-z][a-z0-9_$()+/-]*$`.
pub fn validate_db_name(name: &str) -> Result<(), ConfigError> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some('a'..='z'))
        && chars
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '$' | '(' | ')' | '+' | '/' | '-'))
        && name.len() <= 240;
    if ok {
        Ok(())
    } else {
        err(format!(
            "invalid database name \"{}\": use lower-case letters, digits and _$()+/-, starting with a letter",
            name.escape_default()
        ))
    }
}

impl DbConfig {
    /// The sync function's source, read from its file if configured so; `None` for the default.
    pub fn sync_source(&self) -> Result<Option<String>, String> {
        let text = match &self.sync {
            None => return Ok(None),
            Some(SyncSource::Source(s)) => s.clone(),
            Some(SyncSource::File { file }) => std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?,
        };
        Ok((!text.trim().is_empty()).then_some(text))
    }

    /// `javascript_timeout_ms` or its default.
    pub fn javascript_timeout_ms(&self) -> u64 {
        self.javascript_timeout_ms
            .unwrap_or(crate::sync_fn::DEFAULT_TIMEOUT_MS)
    }

    pub fn revs_limit(&self) -> usize {
        self.revs_limit.unwrap_or(1000) as usize
    }
    pub fn cookie_name(&self) -> &str {
        self.session_cookie_name
            .as_deref()
            .unwrap_or("SyncGatewaySession")
    }
    pub fn session_ttl(&self) -> u64 {
        self.session_ttl_secs.unwrap_or(86_400)
    }
    /// `Secure` on the session cookie: as configured, else whether the server serves TLS.
    pub fn cookie_secure(&self, tls: bool) -> bool {
        self.session_cookie_secure.unwrap_or(tls)
    }
    fn same_site_none(&self) -> bool {
        self.session_cookie_same_site.as_deref() == Some("None")
    }

    /// GUEST's settings: `guest`, or `users.GUEST`; disabled unless configured.
    pub fn guest_config(&self) -> GuestConfig {
        if let Some(g) = &self.guest {
            return GuestConfig {
                disabled: g.disabled.unwrap_or(true),
                admin_channels: g.admin_channels.clone(),
            };
        }
        match self.users.get(GUEST) {
            Some(u) => GuestConfig {
                disabled: u.disabled.unwrap_or(false),
                admin_channels: u.admin_channels.clone(),
            },
            None => GuestConfig {
                disabled: true,
                admin_channels: Vec::new(),
            },
        }
    }

    /// The PostgreSQL options of this database when its storage (its `server`, else
    /// `default_server`) is PostgreSQL; `None` for the embedded store.
    pub fn postgres(&self, default_server: Option<&str>) -> Option<syncgate_storage::PgOptions> {
        let url = self.server.as_deref().or(default_server)?;
        if !is_postgres_url(url) {
            return None;
        }
        let notify = match self.change_notify.as_deref() {
            Some("poll") => syncgate_storage::ChangeNotify::Poll(std::time::Duration::from_millis(
                self.poll_interval_ms.unwrap_or(100).max(1),
            )),
            _ => syncgate_storage::ChangeNotify::Listen,
        };
        Some(syncgate_storage::PgOptions {
            url: url.to_string(),
            pool_size: self.pool_size.unwrap_or(16) as usize,
            notify,
        })
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if let Some(s) = &self.server {
            validate_server(&format!("{at}.server"), s)?;
        }
        if self.pool_size == Some(0) {
            return err(format!("{at}.pool_size: must be at least 1"));
        }
        if let Some(n) = &self.change_notify {
            if n != "listen" && n != "poll" {
                return err(format!(
                    "{at}.change_notify: expected \"listen\" or \"poll\", not \"{n}\""
                ));
            }
        }
        if self.poll_interval_ms == Some(0) {
            return err(format!("{at}.poll_interval_ms: must be at least 1"));
        }
        if let Some(l) = self.revs_limit {
            if l < 20 {
                return err(format!("{at}.revs_limit: must be at least 20 (got {l})"));
            }
        }
        if let Some(s) = &self.session_cookie_same_site {
            if !["Lax", "Strict", "None"].contains(&s.as_str()) {
                return err(format!(
                    "{at}.session_cookie_same_site: expected Lax, Strict or None, not \"{s}\""
                ));
            }
        }
        if let Some(n) = &self.session_cookie_name {
            if n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return err(format!(
                    "{at}.session_cookie_name: \"{n}\" is not a valid cookie name"
                ));
            }
        }
        if self.session_ttl_secs == Some(0) {
            return err(format!("{at}.session_ttl_secs: must be positive"));
        }
        if self.javascript_timeout_ms == Some(0) {
            return err(format!("{at}.javascript_timeout_ms: must be positive"));
        }
        if let Some(src) = self
            .sync_source()
            .map_err(|e| ConfigError(format!("{at}.sync: {e}")))?
        {
            crate::sync_fn::check(&src).map_err(|e| {
                ConfigError(format!(
                    "{at}.sync: the sync function does not compile: {e}"
                ))
            })?;
        }
        if let Some(o) = &self.oidc {
            o.validate(&format!("{at}.oidc")).map_err(ConfigError)?;
        }
        if let Some(l) = &self.local_jwt {
            validate_local_jwt(l, &format!("{at}.local_jwt")).map_err(ConfigError)?;
        }
        if self
            .session_ttl_secs
            .is_some_and(|t| t > syncgate_auth::sessions::MAX_TTL_SECS)
        {
            return err(format!("{at}.session_ttl_secs: too large"));
        }
        for (name, role) in &self.roles {
            let at = format!("{at}.roles.{name}");
            syncgate_auth::principals::validate_name(name)
                .map_err(|e| ConfigError(format!("{at}: {e}")))?;
            if role.admin_channels.iter().any(|c| c.is_empty()) {
                return err(format!(
                    "{at}.admin_channels: channel names must not be empty"
                ));
            }
        }
        for (name, user) in &self.users {
            let at = format!("{at}.users.{name}");
            if name == GUEST {
                if self.guest.is_some() {
                    return err(format!(
                        "{at}: GUEST is configured twice (here and in \"guest\"); keep one"
                    ));
                }
                if user.password.is_some() || user.email.is_some() || !user.admin_roles.is_empty() {
                    return err(format!(
                        "{at}: GUEST takes only \"disabled\" and \"admin_channels\""
                    ));
                }
                continue;
            }
            syncgate_auth::principals::validate_name(name)
                .map_err(|e| ConfigError(format!("{at}: {e}")))?;
            if user.password.is_none() {
                return err(format!("{at}.password: a password is required"));
            }
            user.to_update()
                .map_err(|e| ConfigError(format!("{at}: {e}")))?;
        }
        Ok(())
    }
}

/// Expands `$VAR`, `${VAR}` and `${VAR:-default}` in every string value.
pub fn expand_env(v: &mut Value, path: &str) -> Result<(), ConfigError> {
    match v {
        Value::String(s) if s.contains('$') => {
            *s = expand_str(s).map_err(|var| {
                ConfigError(format!("{path}: environment variable {var} is not set (use ${{{var}:-default}} for a default)"))
            })?;
        }
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                expand_env(x, &format!("{path}[{i}]"))?;
            }
        }
        Value::Object(m) => {
            // a database's sync function is JavaScript: `$name` there is code, not a variable
            let db_block = path
                .strip_prefix("$.databases.")
                .is_some_and(|rest| !rest.contains('.'));
            for (k, x) in m.iter_mut() {
                if db_block && k == "sync" {
                    continue;
                }
                expand_env(x, &format!("{path}.{k}"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands one string; returns the name of the first undefined variable without a default.
/// `$$` is a literal `$`; a `$` not followed by a name is kept.
fn expand_str(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let Some(end) = r.find('}') else {
                out.push_str("${");
                rest = r;
                continue;
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            match (std::env::var(name), default) {
                (Ok(v), _) => out.push_str(&v),
                (Err(_), Some(d)) => out.push_str(d),
                (Err(_), None) => return Err(name.to_string()),
            }
        } else {
            let len = rest
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            if len == 0 || rest.as_bytes()[0].is_ascii_digit() {
                out.push('$');
                continue;
            }
            let name = &rest[..len];
            rest = &rest[len..];
            match std::env::var(name) {
                Ok(v) => out.push_str(&v),
                Err(_) => return Err(name.to_string()),
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into a line with the JSON path and
/// the closest known key.
fn describe_serde_error(path: &str, msg: &str) -> String {
    let at = if path == "." || path.is_empty() {
        "$".to_string()
    } else {
        format!("$.{path}")
    };
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (key, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        // serde's path already ends in the unknown key
        let parent = at.strip_suffix(&format!(".{key}")).unwrap_or(&at);
        let mut line = format!("unknown key \"{key}\" at {parent}");
        if let Some(best) = closest(key, &expected) {
            line.push_str(&format!(" (did you mean \"{best}\"?)"));
        } else if !expected.is_empty() {
            line.push_str(&format!(" (known keys: {})", expected.join(", ")));
        }
        return line;
    }
    format!("{at}: {msg}")
}

fn closest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let key_l = key.to_lowercase();
    candidates
        .iter()
        .map(|c| (levenshtein(&key_l, &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= (c.len().max(key.len()) / 2).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + (ca != *cb) as usize)
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_path_and_suggests() {
        let e =
            ServerConfig::parse(r#"{"databases":{"db":{"revs_limt":30}}}"#, "c.json").unwrap_err();
        assert!(
            e.0.contains("unknown key \"revs_limt\" at $.databases.db"),
            "{}",
            e.0
        );
        assert!(e.0.contains("did you mean \"revs_limit\""), "{}", e.0);
        let e = ServerConfig::parse(r#"{"adminInterfce":"x"}"#, "c.json").unwrap_err();
        assert!(e.0.contains("did you mean \"adminInterface\""), "{}", e.0);
    }

    #[test]
    fn invalid_json_gives_line_and_column() {
        let e = ServerConfig::parse("{\n  \"interface\": ,\n}", "c.json").unwrap_err();
        assert!(e.0.contains("line 2 column"), "{}", e.0);
    }

    #[test]
    fn env_expansion() {
        std::env::set_var("SG_TEST_PORT", "4999");
        assert_eq!(
            expand_str("127.0.0.1:${SG_TEST_PORT}").unwrap(),
            "127.0.0.1:4999"
        );
        assert_eq!(expand_str("$SG_TEST_PORT/x").unwrap(), "4999/x");
        assert_eq!(expand_str("${SG_NOPE_X:-dflt}").unwrap(), "dflt");
        assert_eq!(expand_str("a$$b").unwrap(), "a$b");
        assert_eq!(expand_str("${SG_NOPE_X}").unwrap_err(), "SG_NOPE_X");
        let e = ServerConfig::parse(r#"{"interface":"${SG_NOPE_Y}"}"#, "c.json").unwrap_err();
        assert!(e.0.contains("SG_NOPE_Y is not set"), "{}", e.0);
    }

    #[test]
    fn bad_values() {
        for (cfg, needle) in [
            (r#"{"interface":"nope"}"#, "not a valid address"),
            (r#"{"databases":{"Bad":{}}}"#, "invalid database name"),
            (r#"{"databases":{"db":{"revs_limit":5}}}"#, "at least 20"),
            (
                r#"{"logging":{"console":{"log_level":"loud"}}}"#,
                "unknown level",
            ),
            (
                r#"{"databases":{"db":{"session_cookie_same_site":"lax"}}}"#,
                "expected Lax",
            ),
            (
                r#"{"databases":{"db":{"revs_limit":"x"}}}"#,
                "$.databases.db.revs_limit",
            ),
        ] {
            let e = ServerConfig::parse(cfg, "c.json").unwrap_err();
            assert!(e.0.contains(needle), "{cfg}: {}", e.0);
        }
        assert!(ServerConfig::parse("{}", "c.json").is_ok());
    }

    #[test]
    fn jwt_provider_blocks() {
        let ok = r#"{"databases":{"db":{
            "oidc":{"providers":{"google":{"issuer":"https://accounts.google.com","client_id":"c"}}},
            "local_jwt":{"app":{"issuer":"i","client_id":"","algorithms":["HS256"],"hmac_secret":"${SG_TEST_HMAC:-s3cret}"}}}}}"#;
        let cfg = ServerConfig::parse(ok, "c.json").unwrap();
        let db = &cfg.databases["db"];
        assert_eq!(db.oidc.as_ref().unwrap().providers.len(), 1);
        assert_eq!(
            db.local_jwt.as_ref().unwrap()["app"]
                .hmac_secret
                .as_ref()
                .unwrap()
                .expose(),
            "s3cret"
        );
        for (cfg, needle) in [
            (
                r#"{"databases":{"db":{"oidc":{"providers":{"g":{"issuer":"https://a","client_id":"c","clientid":"x"}}}}}}"#,
                "unknown key \"clientid\" at $.databases.db.oidc.providers.g (did you mean \"client_id\"?)",
            ),
            (
                r#"{"databases":{"db":{"local_jwt":{"p":{"issuer":"i","client_id":"","algorithms":["RS256"],"pem":["x"],"algorithm":[]}}}}}"#,
                "unknown key \"algorithm\" at $.databases.db.local_jwt.p",
            ),
            (
                r#"{"databases":{"db":{"local_jwt":{"p":{"issuer":"i","client_id":"","algorithms":["XS256"],"hmac_secret":"s"}}}}}"#,
                "$.databases.db.local_jwt.p.algorithms[0]: unknown algorithm \"XS256\"",
            ),
            (
                r#"{"databases":{"db":{"oidc":{"providers":{"g":{"issuer":"","client_id":"c"}}}}}}"#,
                "$.databases.db.oidc.providers.g.issuer: missing",
            ),
            (
                r#"{"databases":{"db":{"local_jwt":{"p":{"issuer":"i","client_id":"","algorithms":["RS256"],"pem":["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"]}}}}}"#,
                "$.databases.db.local_jwt.p.pem[0]: unparsable PEM public key",
            ),
        ] {
            let e = ServerConfig::parse(cfg, "c.json").unwrap_err();
            assert!(e.0.contains(needle), "{cfg}: {}", e.0);
        }
    }
}
