//! Fetching from identity providers: discovery documents and JWKS, with caching.
//!
//! Everything is lazy (the first token that needs it triggers the fetch) and bounded:
//! short timeouts, a size cap on bodies, one fetch at a time per key set or discovery
//! document (concurrent callers wait for that fetch and share its result), a minimum interval
//! between JWKS refetches triggered by unknown keys, and a short back-off after a failure so a
//! provider that is down costs at most one connection attempt per second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::keys::{parse_jwks, Alg, VerifyKey};
use super::JwtError;

/// Connect timeout for provider requests.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Whole-request timeout for provider requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest discovery or JWKS document read.
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// Discovery documents are re-fetched after their Cache-Control lifetime, clamped to this range.
pub const DISCOVERY_MIN_TTL: Duration = Duration::from_secs(60);
pub const DISCOVERY_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Minimum time between two JWKS fetches of one provider caused by unknown keys.
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);
/// After a failed fetch, the next attempt waits at least this long.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Key-set versions: every distinct key set gets a new number, so a verified-token cache entry
/// can tell that the keys it was verified with are gone.
static GENERATION: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_generation() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// The HTTP client, built on first use (servers without remote providers never build one).
#[derive(Default)]
pub struct Http {
    client: OnceLock<Result<reqwest::Client, String>>,
    /// For token requests: never follows redirects (a redirected POST could carry the code
    /// and the client secret elsewhere).
    token_client: OnceLock<Result<reqwest::Client, String>>,
}

/// A fetched JSON document and how long it may be cached.
pub struct Fetched {
    pub body: Value,
    pub ttl: Duration,
}

impl Http {
    fn client(&self) -> Result<&reqwest::Client, JwtError> {
        self.client
            .get_or_init(|| {
                reqwest::Client::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(REQUEST_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::limited(3))
                    .user_agent(concat!("syncgate/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| JwtError::ProviderUnavailable(format!("HTTP client: {e}")))
    }

    /// The client for token-endpoint requests (no redirects).
    pub fn token_client(&self) -> Result<&reqwest::Client, JwtError> {
        self.token_client
            .get_or_init(|| {
                reqwest::Client::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(REQUEST_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("syncgate/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| JwtError::ProviderUnavailable(format!("HTTP client: {e}")))
    }

    /// GETs a JSON document.
    pub async fn get_json(&self, url: &str) -> Result<Fetched, JwtError> {
        let unavailable = |what: String| JwtError::ProviderUnavailable(what);
        let mut resp = self
            .client()?
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| unavailable(format!("GET {url}: {}", short_error(&e))))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("GET {url}: HTTP {}", resp.status())));
        }
        let ttl = cache_ttl(resp.headers());
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| unavailable(format!("GET {url}: {}", short_error(&e))))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(unavailable(format!(
                    "GET {url}: document larger than 1 MiB"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let body = serde_json::from_slice(&body)
            .map_err(|_| unavailable(format!("GET {url}: not a JSON document")))?;
        Ok(Fetched { body, ttl })
    }
}

pub(crate) fn short_error(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    }
}

/// The lifetime of a response per `Cache-Control: max-age` (or `Expires` − `Date`), clamped to
/// [1 min, 24 h]; 24 h when the response says nothing.
pub fn cache_ttl(h: &reqwest::header::HeaderMap) -> Duration {
    let header = |name| h.get(name).and_then(|v| v.to_str().ok());
    let secs = if let Some(cc) = header("cache-control") {
        let mut ttl = None;
        for d in cc.split(',').map(str::trim) {
            let dl = d.to_ascii_lowercase();
            if dl == "no-store" || dl == "no-cache" {
                ttl = Some(0);
                break;
            }
            if let Some(v) = dl.strip_prefix("max-age=") {
                ttl = v.trim_matches('"').parse::<u64>().ok();
            }
        }
        ttl
    } else {
        None
    };
    let secs = secs.or_else(|| {
        let expires = httpdate::parse_http_date(header("expires")?).ok()?;
        let date = header("date")
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .unwrap_or_else(SystemTime::now);
        Some(
            expires
                .duration_since(date)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    });
    match secs {
        Some(s) => Duration::from_secs(s).clamp(DISCOVERY_MIN_TTL, DISCOVERY_MAX_TTL),
        None => DISCOVERY_MAX_TTL,
    }
}

/// One version of a key set.
#[derive(Debug)]
pub struct KeySnapshot {
    pub keys: Vec<VerifyKey>,
    /// Changes whenever the keys do.
    pub generation: u64,
    fingerprint: [u8; 32],
    /// False until the first successful fetch.
    pub loaded: bool,
}

impl KeySnapshot {
    pub fn new(keys: Vec<VerifyKey>, loaded: bool) -> KeySnapshot {
        let mut h = Sha256::new();
        for k in &keys {
            h.update(k.fingerprint());
        }
        KeySnapshot {
            keys,
            generation: next_generation(),
            fingerprint: h.finalize().into(),
            loaded,
        }
    }
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_failed: bool,
}

/// A JWKS at a URL, cached in memory.
pub struct RemoteKeySet {
    pub uri: String,
    snapshot: RwLock<Arc<KeySnapshot>>,
    /// Held while fetching: concurrent callers queue here and reuse the result.
    fetch: Mutex<FetchState>,
    /// Completed fetch attempts (tells a waiter that a fetch happened while it waited).
    attempts: AtomicU64,
    /// Successful fetches (for tests and logs).
    pub fetches: AtomicU64,
    min_refetch: Duration,
}

impl RemoteKeySet {
    pub fn new(uri: String) -> RemoteKeySet {
        RemoteKeySet::with_interval(uri, JWKS_MIN_REFETCH)
    }

    pub fn with_interval(uri: String, min_refetch: Duration) -> RemoteKeySet {
        RemoteKeySet {
            uri,
            snapshot: RwLock::new(Arc::new(KeySnapshot::new(Vec::new(), false))),
            fetch: Mutex::new(FetchState::default()),
            attempts: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            min_refetch,
        }
    }

    pub fn current(&self) -> Arc<KeySnapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The keys, fetching them if they were never loaded.
    pub async fn keys(&self, http: &Http) -> Result<Arc<KeySnapshot>, JwtError> {
        let cur = self.current();
        if cur.loaded {
            return Ok(cur);
        }
        let seen = self.attempts.load(Ordering::Acquire);
        self.refresh(http, seen).await
    }

    /// Re-fetches because a token named a key we do not have. `seen` is the attempt counter
    /// read before the caller looked at the keys: if a fetch finished since, its result is
    /// used instead of fetching again. At most one fetch per `min_refetch` (per
    /// [`RETRY_AFTER_FAILURE`] while the keys were never loaded); otherwise the current keys
    /// are returned unchanged.
    pub async fn refresh(&self, http: &Http, seen: u64) -> Result<Arc<KeySnapshot>, JwtError> {
        let mut st = self.fetch.lock().await;
        let cur = self.current();
        if self.attempts.load(Ordering::Acquire) != seen {
            return if cur.loaded || !st.last_failed {
                Ok(cur)
            } else {
                Err(JwtError::ProviderUnavailable(format!(
                    "cannot fetch the JWKS from {}",
                    self.uri
                )))
            };
        }
        let interval = if cur.loaded && !st.last_failed {
            self.min_refetch
        } else {
            RETRY_AFTER_FAILURE
        };
        if st.last_attempt.is_some_and(|t| t.elapsed() < interval) {
            return if cur.loaded {
                Ok(cur)
            } else {
                Err(JwtError::ProviderUnavailable(format!(
                    "cannot fetch the JWKS from {} (retrying shortly)",
                    self.uri
                )))
            };
        }
        st.last_attempt = Some(Instant::now());
        let result = http.get_json(&self.uri).await.and_then(|f| {
            parse_jwks(&f.body)
                .map_err(|e| JwtError::ProviderUnavailable(format!("JWKS from {}: {e}", self.uri)))
        });
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok((keys, skipped)) => {
                st.last_failed = false;
                self.fetches.fetch_add(1, Ordering::Relaxed);
                let new = KeySnapshot::new(keys, true);
                if cur.loaded && new.fingerprint == cur.fingerprint {
                    return Ok(cur);
                }
                tracing::info!(
                    uri = %self.uri,
                    keys = new.keys.len(),
                    skipped,
                    "loaded JWKS"
                );
                let new = Arc::new(new);
                *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
                Ok(new)
            }
            Err(e) => {
                st.last_failed = true;
                tracing::warn!(uri = %self.uri, error = %e, "JWKS fetch failed");
                if cur.loaded {
                    Ok(cur)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The attempt counter, to pass to [`RemoteKeySet::refresh`].
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }
}

/// What a discovery document told us.
pub struct Discovered {
    /// Advertised ∩ {RS*, PS*, ES*, EdDSA}; RS256 when that is empty.
    pub algs: Vec<Alg>,
    pub keys: Arc<RemoteKeySet>,
    /// The code flow's endpoints (absent from implicit-only providers' documents).
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    /// `token_endpoint_auth_methods_supported` (OpenID default: `client_secret_basic`).
    pub token_auth_methods: Vec<String>,
    /// RFC 9207: the provider adds `iss` to its authorization responses.
    pub iss_in_response: bool,
    expires: Instant,
}

/// An OpenID provider's discovery document, fetched lazily and refreshed per Cache-Control.
pub struct Discovery {
    pub url: String,
    issuer: String,
    current: RwLock<Option<Arc<Discovered>>>,
    fetch: Mutex<FetchState>,
    attempts: AtomicU64,
}

/// Algorithms an OpenID provider may use: never HS* (the client secret would become a signing
/// key) and never `none`.
fn oidc_algs(advertised: Option<&Value>) -> Vec<Alg> {
    let mut algs: Vec<Alg> = advertised
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter_map(Alg::parse)
                .filter(|a| !a.is_hmac())
                .collect()
        })
        .unwrap_or_default();
    algs.sort();
    algs.dedup();
    if algs.is_empty() {
        algs.push(Alg::RS256);
    }
    algs
}

impl Discovery {
    pub fn new(issuer: &str, discovery_url: Option<&str>) -> Discovery {
        let url = discovery_url.map(str::to_string).unwrap_or_else(|| {
            format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            )
        });
        Discovery {
            url,
            issuer: issuer.to_string(),
            current: RwLock::new(None),
            fetch: Mutex::new(FetchState::default()),
            attempts: AtomicU64::new(0),
        }
    }

    pub fn current(&self) -> Option<Arc<Discovered>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The provider metadata, fetched or refreshed when needed. A stale document is used
    /// while the provider cannot be reached.
    pub async fn get(&self, http: &Http) -> Result<Arc<Discovered>, JwtError> {
        let cur = self.current();
        if let Some(d) = &cur {
            if d.expires > Instant::now() {
                return Ok(d.clone());
            }
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let mut st = self.fetch.lock().await;
        let cur = self.current();
        let unavailable = || {
            JwtError::ProviderUnavailable(format!(
                "cannot fetch the OpenID configuration from {}",
                self.url
            ))
        };
        if self.attempts.load(Ordering::Acquire) != seen
            || st
                .last_attempt
                .is_some_and(|t| t.elapsed() < RETRY_AFTER_FAILURE)
        {
            return cur.ok_or_else(unavailable);
        }
        st.last_attempt = Some(Instant::now());
        let result = self.fetch_once(http, cur.as_deref()).await;
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(d) => {
                st.last_failed = false;
                let d = Arc::new(d);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(d.clone());
                Ok(d)
            }
            Err(e) => {
                st.last_failed = true;
                tracing::warn!(url = %self.url, error = %e, "OpenID discovery failed");
                match cur {
                    Some(c) => Ok(c),
                    None => Err(e),
                }
            }
        }
    }

    async fn fetch_once(
        &self,
        http: &Http,
        cur: Option<&Discovered>,
    ) -> Result<Discovered, JwtError> {
        let f = http.get_json(&self.url).await?;
        let bad = |what: &str| {
            JwtError::ProviderUnavailable(format!("OpenID configuration at {}: {what}", self.url))
        };
        let issuer = f
            .body
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no issuer"))?;
        if issuer != self.issuer {
            return Err(bad("its issuer differs from the configured issuer"));
        }
        let jwks_uri = f
            .body
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no jwks_uri"))?;
        super::config::check_http_url(jwks_uri).map_err(|e| bad(&format!("jwks_uri {e}")))?;
        let algs = oidc_algs(f.body.get("id_token_signing_alg_values_supported"));
        // keep the cached keys when the document still points at the same JWKS
        let keys = match cur {
            Some(c) if c.keys.uri == jwks_uri => c.keys.clone(),
            _ => Arc::new(RemoteKeySet::new(jwks_uri.to_string())),
        };
        let endpoint = |name: &str| -> Result<Option<String>, JwtError> {
            match f.body.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(u)) => {
                    super::config::check_http_url(u).map_err(|e| bad(&format!("{name} {e}")))?;
                    Ok(Some(u.clone()))
                }
                Some(_) => Err(bad(&format!("{name} is not a string"))),
            }
        };
        let token_auth_methods = f
            .body
            .get("token_endpoint_auth_methods_supported")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_else(|| vec!["client_secret_basic".to_string()]);
        Ok(Discovered {
            algs,
            keys,
            authorization_endpoint: endpoint("authorization_endpoint")?,
            token_endpoint: endpoint("token_endpoint")?,
            token_auth_methods,
            iss_in_response: f
                .body
                .get("authorization_response_iss_parameter_supported")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            expires: Instant::now() + f.ttl,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};
    use std::sync::Mutex as StdMutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn cache_control_lifetimes() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            cache_ttl(&m)
        };
        assert_eq!(h(&[]), DISCOVERY_MAX_TTL);
        assert_eq!(
            h(&[("cache-control", "public, max-age=3600")]).as_secs(),
            3600
        );
        assert_eq!(h(&[("cache-control", "max-age=5")]), DISCOVERY_MIN_TTL);
        assert_eq!(h(&[("cache-control", "max-age=999999")]), DISCOVERY_MAX_TTL);
        assert_eq!(h(&[("cache-control", "no-store")]), DISCOVERY_MIN_TTL);
        assert_eq!(
            h(&[
                ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
                ("expires", "Wed, 21 Oct 2015 09:28:00 GMT")
            ])
            .as_secs(),
            7200
        );
        assert_eq!(
            h(&[("expires", "Wed, 21 Oct 2015 09:28:00 GMT")]),
            DISCOVERY_MIN_TTL
        );
    }

    #[test]
    fn oidc_algorithms_exclude_hmac_and_none() {
        let v = serde_json::json!(["HS256", "none", "RS256", "ES512", "EdDSA", "XYZ"]);
        assert_eq!(
            oidc_algs(Some(&v)),
            vec![Alg::RS256, Alg::ES512, Alg::EdDSA]
        );
        assert_eq!(
            oidc_algs(Some(&serde_json::json!(["HS256"]))),
            vec![Alg::RS256]
        );
        assert_eq!(oidc_algs(None), vec![Alg::RS256]);
    }

    /// A tiny loopback HTTP server answering every GET with the current body; counts requests.
    pub struct TestServer {
        pub url: String,
        pub hits: Arc<AtomicU64>,
        pub body: Arc<StdMutex<(String, String)>>,
    }

    impl TestServer {
        pub async fn start(body: &str) -> TestServer {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let hits = Arc::new(AtomicU64::new(0));
            let body = Arc::new(StdMutex::new((body.to_string(), String::new())));
            let (h, b) = (hits.clone(), body.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut s, _)) = listener.accept().await else {
                        return;
                    };
                    let (h, b) = (h.clone(), b.clone());
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        let _ = s.read(&mut buf).await;
                        h.fetch_add(1, Ordering::SeqCst);
                        let (text, extra) = b.lock().unwrap().clone();
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{text}",
                            text.len()
                        );
                        let _ = s.write_all(resp.as_bytes()).await;
                    });
                }
            });
            TestServer { url, hits, body }
        }

        pub fn set(&self, body: &str) {
            self.body.lock().unwrap().0 = body.to_string();
        }

        pub fn hits(&self) -> u64 {
            self.hits.load(Ordering::SeqCst)
        }
    }

    pub fn jwks_with(pems: &[&str], kids: &[&str]) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        use rsa::pkcs8::DecodePublicKey;
        use rsa::traits::PublicKeyParts;
        let keys: Vec<Value> = pems
            .iter()
            .zip(kids)
            .map(|(p, k)| {
                let pk = rsa::RsaPublicKey::from_public_key_pem(p).unwrap();
                serde_json::json!({"kty":"RSA","kid":k,"use":"sig",
                    "n": URL_SAFE_NO_PAD.encode(pk.n().to_bytes_be()),
                    "e": URL_SAFE_NO_PAD.encode(pk.e().to_bytes_be())})
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    #[tokio::test]
    async fn jwks_refetch_is_coalesced_and_rate_limited() {
        use super::super::keys::tests::RSA_PUBLIC_SPKI;
        let srv = TestServer::start(&jwks_with(&[RSA_PUBLIC_SPKI], &["k1"])).await;
        let http = Http::default();
        let set = Arc::new(RemoteKeySet::with_interval(
            format!("{}/jwks", srv.url),
            Duration::from_millis(400),
        ));
        let snap = set.keys(&http).await.unwrap();
        assert_eq!(snap.keys.len(), 1);
        assert_eq!(srv.hits(), 1);
        // a flood of unknown-kid refetches right after: none goes out (rate limit)
        let seen = set.attempts();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (set, http) = (set.clone(), Http::default());
            tasks.push(tokio::spawn(async move { set.refresh(&http, seen).await }));
        }
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(srv.hits(), 1);
        // after the interval, concurrent refetches coalesce into one request
        tokio::time::sleep(Duration::from_millis(450)).await;
        let seen = set.attempts();
        let http = Arc::new(Http::default());
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (set, http) = (set.clone(), http.clone());
            tasks.push(tokio::spawn(async move { set.refresh(&http, seen).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(srv.hits(), 2);
        // unchanged content keeps the generation; changed content bumps it
        assert_eq!(set.current().generation, snap.generation);
        tokio::time::sleep(Duration::from_millis(450)).await;
        srv.set(&jwks_with(&[RSA_PUBLIC_SPKI], &["k2"]));
        let new = set.refresh(&http, set.attempts()).await.unwrap();
        assert_ne!(new.generation, snap.generation);
        assert_eq!(new.keys[0].kid.as_deref(), Some("k2"));
    }

    #[tokio::test]
    async fn provider_down_then_up() {
        // a port with nothing listening
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let http = Http::default();
        let set = RemoteKeySet::new(format!("http://{addr}/jwks"));
        let e = set.keys(&http).await.unwrap_err();
        assert!(matches!(e, JwtError::ProviderUnavailable(_)), "{e}");
        // immediately again: backed off, no new attempt
        assert!(set.keys(&http).await.is_err());
        assert_eq!(set.attempts(), 1);
        // the provider comes up at that address
        use super::super::keys::tests::RSA_PUBLIC_SPKI;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let body = jwks_with(&[RSA_PUBLIC_SPKI], &["k1"]);
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        tokio::time::sleep(RETRY_AFTER_FAILURE).await;
        assert_eq!(set.keys(&http).await.unwrap().keys.len(), 1);
    }

    #[tokio::test]
    async fn discovery_checks_issuer_and_keeps_keys() {
        let srv = TestServer::start("{}").await;
        let issuer = srv.url.clone();
        srv.set(
            &serde_json::json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks"),
                "id_token_signing_alg_values_supported": ["RS256","HS256"]})
            .to_string(),
        );
        srv.body.lock().unwrap().1 = "cache-control: max-age=120\r\n".into();
        let http = Http::default();
        let d = Discovery::new(&issuer, None);
        assert!(d.url.ends_with("/.well-known/openid-configuration"));
        let got = d.get(&http).await.unwrap();
        assert_eq!(got.algs, vec![Alg::RS256]);
        assert_eq!(got.keys.uri, format!("{issuer}/jwks"));
        // cached: no second request
        d.get(&http).await.unwrap();
        assert_eq!(srv.hits(), 1);
        // wrong issuer is refused
        let d2 = Discovery::new("http://other.example", Some(&format!("{issuer}/x")));
        let e = d2.get(&http).await.err().unwrap().to_string();
        assert!(e.contains("issuer differs"), "{e}");
    }
}
