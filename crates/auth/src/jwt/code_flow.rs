//! The OpenID Connect authorization-code flow (SPEC §15): `_oidc` starts a login, the
//! provider sends the browser back to `_oidc_callback`, `_oidc_refresh` trades a refresh token.
//!
//! Built on the `openidconnect` crate (authorization URL, PKCE S256, nonce, the token requests
//! and the ID token's nonce/`azp`/`aud` claims), with our reqwest client handed to it through
//! its `AsyncHttpClient` trait. Provider metadata and keys come from the implicit flow's
//! [`super::remote::Discovery`] (one place fetches them) and the ID token goes through the same
//! §7b checks as a Bearer token ([`super::JwtAuth::verify_for_provider`]).
//!
//! A login is a server-side transaction ([`LoginRecord`]: provider, PKCE verifier, nonce,
//! `return_to`, 5-minute expiry), stored under HMAC(server key, state) and taken atomically by
//! the callback, so it is used once whether the callback succeeds or not. It is bound to the
//! browser that started it: the browser gets a random value in an HttpOnly, SameSite=Lax cookie
//! and the record keeps only its SHA-256. No token, code, state, nonce or verifier is logged.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreErrorResponseType, CoreIdTokenVerifier,
    CoreTokenResponse,
};
use openidconnect::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, IssuerUrl, JsonWebKeySet, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardErrorResponse,
    TokenResponse, TokenUrl,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use syncgate_storage::{BoxFuture, DatabaseStore};

use super::config::{url_origin, OidcConfig, OidcProviderConfig};
use super::remote::{short_error, Discovered, MAX_BODY};
use super::{JwtAuth, JwtError, JwtIdentity};
use crate::principals::Principals;
use crate::sessions::{now_ms, CookieSettings};
use crate::AuthError;

/// How long a started login may take.
pub const LOGIN_TTL: Duration = Duration::from_secs(300);
/// The cookie that binds a login transaction to the browser that started it.
pub const LOGIN_COOKIE: &str = "syncgate_oidc_login";

/// A pending login, stored under a keyed hash of its `state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRecord {
    pub provider: String,
    /// The PKCE code verifier (sent on the token request only).
    pub verifier: String,
    pub nonce: String,
    /// SHA-256 (hex) of the browser's login cookie value.
    pub binding: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_to: Option<String>,
    /// Absolute expiry, ms since the epoch.
    pub expires_ms: u64,
}

/// Random bytes, base64url without padding.
fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Pending logins of one database, behind the storage trait.
pub struct LoginStore {
    store: Arc<dyn DatabaseStore>,
    key: Vec<u8>,
}

impl LoginStore {
    pub fn new(store: Arc<dyn DatabaseStore>, key: Vec<u8>) -> LoginStore {
        LoginStore { store, key }
    }

    /// The storage key of a state: HMAC-SHA256(server key, "oidc-state\0" + state).
    fn storage_key(&self, state: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new_from_slice(b"syncgate").expect("key"));
        mac.update(b"oidc-state\0");
        mac.update(state.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    pub async fn put(&self, state: &str, rec: &LoginRecord) -> Result<(), AuthError> {
        let bytes = serde_json::to_vec(rec)
            .map_err(|e| AuthError::Internal(format!("login transaction encoding: {e}")))?;
        self.store
            .put_login(&self.storage_key(state), bytes)
            .await?;
        Ok(())
    }

    /// Removes and returns the transaction of a state (None: unknown or already used).
    pub async fn take(&self, state: &str) -> Result<Option<LoginRecord>, AuthError> {
        match self.store.take_login(&self.storage_key(state)).await? {
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                AuthError::Internal(format!(
                    "stored OpenID Connect login transaction does not decode: {e}"
                ))
            }),
            None => Ok(None),
        }
    }

    /// Deletes expired (and undecodable) transactions; returns how many.
    pub async fn collect(&self, now_ms: u64) -> Result<usize, AuthError> {
        let dead: Vec<String> = self
            .store
            .list_logins()
            .await?
            .into_iter()
            .filter(|(_, v)| {
                serde_json::from_slice::<LoginRecord>(v).map_or(true, |r| r.expires_ms <= now_ms)
            })
            .map(|(k, _)| k)
            .collect();
        if !dead.is_empty() {
            self.store.delete_logins(&dead).await?;
        }
        Ok(dead.len())
    }

    pub async fn count(&self) -> Result<usize, AuthError> {
        Ok(self.store.list_logins().await?.len())
    }
}

/// Where `_oidc` sends the browser, and the cookie that binds the login to it.
#[derive(Debug)]
pub struct LoginStart {
    pub authorization_url: String,
    /// `Set-Cookie` value.
    pub set_cookie: String,
}

/// The query of `_oidc_callback`.
#[derive(Debug, Default, Clone)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    /// RFC 9207 `iss` of the authorization response.
    pub iss: Option<String>,
    /// SG's `provider` parameter (must agree with the transaction when present).
    pub provider: Option<String>,
}

/// A completed login or refresh: what the answer carries and what the session needs.
#[derive(Debug)]
pub struct Login {
    pub id_token: String,
    pub refresh_token: Option<String>,
    /// Only with `include_access`.
    pub access_token: Option<String>,
    pub token_type: Option<String>,
    pub expires_in: Option<u64>,
    pub username: String,
    /// The session lifetime: until the ID token's `exp` (SG), None when it has none.
    pub session_ttl: Option<Duration>,
    pub return_to: Option<String>,
    pub disable_session: bool,
}

fn bad_request(msg: impl Into<String>) -> AuthError {
    AuthError::BadRequest(msg.into())
}

fn refused(msg: impl Into<String>) -> AuthError {
    AuthError::Unauthorized {
        reason: msg.into(),
        challenge: false,
    }
}

/// An OAuth error code from a provider, reduced to its token characters (it goes into a
/// reason; the description only into the debug log).
fn error_code(s: &str) -> String {
    let c: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect();
    if c.is_empty() {
        "unknown_error".into()
    } else {
        c
    }
}

/// Why a token request failed at the HTTP level (a 502).
#[derive(Debug, thiserror::Error)]
pub enum TokenHttpError {
    #[error("cannot reach the token endpoint ({0})")]
    Unreachable(&'static str),
    #[error("the token endpoint answered HTTP {0}")]
    Status(u16),
    #[error("the token endpoint's answer is larger than 1 MiB")]
    TooLarge,
}

/// Sends one token request with our client: no redirects, a size cap, and 5xx as an error
/// (so it becomes a 502, never a parse failure or a 401).
async fn send(
    client: &reqwest::Client,
    req: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, TokenHttpError> {
    let (parts, body) = req.into_parts();
    let mut resp = client
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| TokenHttpError::Unreachable(short_error(&e)))?;
    let status = resp.status();
    if status.is_server_error() {
        return Err(TokenHttpError::Status(status.as_u16()));
    }
    let mut out = http::Response::builder().status(status);
    for (k, v) in resp.headers() {
        out = out.header(k, v);
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| TokenHttpError::Unreachable(short_error(&e)))?
    {
        if bytes.len() + chunk.len() > MAX_BODY {
            return Err(TokenHttpError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    out.body(bytes)
        .map_err(|_| TokenHttpError::Unreachable("unreadable response"))
}

/// Our reqwest client as `openidconnect`'s HTTP client (its pluggable `AsyncHttpClient`).
struct TokenHttp(reqwest::Client);

impl<'c> openidconnect::AsyncHttpClient<'c> for TokenHttp {
    type Error = TokenHttpError;
    type Future = BoxFuture<'c, Result<openidconnect::HttpResponse, TokenHttpError>>;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(send(&self.0, request))
    }
}

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointNotSet,
>;

type TokenError = RequestTokenError<TokenHttpError, StandardErrorResponse<CoreErrorResponseType>>;

/// The token request of the code exchange. Boxed: the `openidconnect` request futures are
/// generic over the HTTP client's lifetime, and the handlers' futures must be `Send` for all
/// lifetimes.
fn exchange_code<'a>(
    client: &'a Client,
    http: &'a reqwest::Client,
    code: AuthorizationCode,
    verifier: PkceCodeVerifier,
) -> BoxFuture<'a, Result<CoreTokenResponse, TokenError>> {
    Box::pin(async move {
        let http = TokenHttp(http.clone());
        client
            .exchange_code(code)
            .set_pkce_verifier(verifier)
            .request_async(&http)
            .await
    })
}

/// The token request of a refresh (boxed as [`exchange_code`]).
fn exchange_refresh<'a>(
    client: &'a Client,
    http: &'a reqwest::Client,
    token: &'a RefreshToken,
) -> BoxFuture<'a, Result<CoreTokenResponse, TokenError>> {
    Box::pin(async move {
        let http = TokenHttp(http.clone());
        client
            .exchange_refresh_token(token)
            .request_async(&http)
            .await
    })
}

/// What a failed token request means for the caller: the provider refused (401, naming its
/// error code) or could not be used (502).
fn token_error(provider: &str, what: &str, e: TokenError) -> AuthError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let code = error_code(r.error().as_ref());
            tracing::debug!(
                provider,
                error = %code,
                description = r.error_description().map(String::as_str).unwrap_or(""),
                "{what} refused by the provider"
            );
            refused(format!(
                "OpenID Connect {what} refused by provider \"{provider}\": {code}"
            ))
        }
        RequestTokenError::Request(e) => {
            tracing::warn!(provider, error = %e, "{what} failed");
            AuthError::BadGateway(format!(
                "OpenID Connect {what} with provider \"{provider}\" failed: {e}"
            ))
        }
        RequestTokenError::Parse(e, _) => {
            // the path only: a serde message could quote a token
            let path = e.path().to_string();
            tracing::warn!(provider, at = %path, "unreadable token response");
            AuthError::BadGateway(format!(
                "OpenID Connect {what}: provider \"{provider}\" answered with an unreadable token \
                 response (at {path})"
            ))
        }
        RequestTokenError::Other(m) => {
            tracing::warn!(provider, "token request: {m}");
            AuthError::BadGateway(format!(
                "OpenID Connect {what} with provider \"{provider}\" failed: unexpected answer"
            ))
        }
    }
}

fn provider_unavailable(name: &str, e: JwtError) -> AuthError {
    AuthError::BadGateway(format!(
        "OpenID Connect provider \"{name}\" is unavailable: {e}"
    ))
}

/// The code flow of one database.
pub struct CodeFlow {
    jwt: Arc<JwtAuth>,
    config: OidcConfig,
    logins: LoginStore,
    db: String,
    login_ttl: Duration,
}

/// The login lifetime: 5 minutes; the black-box tests shorten it with
/// `SYNCGATE_OIDC_LOGIN_TTL_SECS` (a positive number of seconds, at most 300).
fn login_ttl() -> Duration {
    match std::env::var("SYNCGATE_OIDC_LOGIN_TTL_SECS") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if (1..=LOGIN_TTL.as_secs()).contains(&n) => Duration::from_secs(n),
            _ => {
                tracing::warn!("SYNCGATE_OIDC_LOGIN_TTL_SECS must be 1..=300; using 300");
                LOGIN_TTL
            }
        },
        Err(_) => LOGIN_TTL,
    }
}

impl CodeFlow {
    /// `None` when the database has no `oidc` block.
    pub fn new(
        db: &str,
        config: Option<&OidcConfig>,
        jwt: Option<Arc<JwtAuth>>,
        store: Arc<dyn DatabaseStore>,
        key: Vec<u8>,
    ) -> Option<CodeFlow> {
        let (config, jwt) = (config?, jwt?);
        Some(CodeFlow {
            jwt,
            config: config.clone(),
            logins: LoginStore::new(store, key),
            db: db.to_string(),
            login_ttl: login_ttl(),
        })
    }

    pub fn logins(&self) -> &LoginStore {
        &self.logins
    }

    /// The provider a request names, or the default one (`default_provider`, or the only one).
    fn provider<'a>(
        &'a self,
        name: Option<&'a str>,
    ) -> Result<(&'a str, &'a OidcProviderConfig), AuthError> {
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => match (&self.config.default_provider, self.config.providers.len()) {
                (Some(d), _) => d.as_str(),
                (None, 1) => self
                    .config
                    .providers
                    .keys()
                    .next()
                    .map(String::as_str)
                    .unwrap_or(""),
                (None, _) => {
                    return Err(bad_request(format!(
                        "OpenID Connect: name a provider (?provider=); database {} has several \
                         and no default_provider",
                        self.db
                    )))
                }
            },
        };
        match self.config.providers.get_key_value(name) {
            Some((n, p)) => Ok((n.as_str(), p)),
            None => Err(bad_request(format!(
                "OpenID Connect provider \"{name}\" is not configured for database {}",
                self.db
            ))),
        }
    }

    /// Provider metadata (shared with the implicit flow) and an `openidconnect` client.
    async fn client(
        &self,
        name: &str,
        p: &OidcProviderConfig,
    ) -> Result<(Client, Arc<Discovered>), AuthError> {
        let Some(callback) = &p.callback_url else {
            return Err(bad_request(format!(
                "OpenID Connect provider \"{name}\" has no callback_url: the authorization-code \
                 flow is not enabled for it"
            )));
        };
        let d = self
            .jwt
            .discovered(name)
            .await
            .map_err(|e| provider_unavailable(name, e))?;
        let missing = |what: &str| {
            AuthError::BadGateway(format!(
                "OpenID Connect provider \"{name}\" advertises no {what}"
            ))
        };
        let auth = d
            .authorization_endpoint
            .as_deref()
            .ok_or_else(|| missing("authorization_endpoint"))?;
        let token = d
            .token_endpoint
            .as_deref()
            .ok_or_else(|| missing("token_endpoint"))?;
        let bad_url = |what: &str| AuthError::Internal(format!("provider \"{name}\": bad {what}"));
        // the issuer is checked by our own pipeline; openidconnect only needs a URL here
        let issuer = IssuerUrl::new(p.issuer.clone())
            .or_else(|_| IssuerUrl::new("https://issuer.invalid".into()))
            .map_err(|_| bad_url("issuer"))?;
        // the client authentication the provider advertises (client_secret_basic is the
        // default of OAuth and OpenID discovery); a provider that takes none ("none") gets a
        // public client's request: client_id in the body, PKCE as the proof, no secret sent
        let methods = &d.token_auth_methods;
        let has = |m: &str| methods.iter().any(|x| x == m);
        let secret = p
            .validation_key
            .as_ref()
            .filter(|_| has("client_secret_basic") || has("client_secret_post") || !has("none"));
        let mut client = CoreClient::new(
            ClientId::new(p.client_id.clone()),
            issuer,
            JsonWebKeySet::default(),
        )
        .set_auth_uri(
            AuthUrl::new(auth.to_string()).map_err(|_| bad_url("authorization_endpoint"))?,
        )
        .set_token_uri(TokenUrl::new(token.to_string()).map_err(|_| bad_url("token_endpoint"))?)
        .set_redirect_uri(RedirectUrl::new(callback.clone()).map_err(|_| bad_url("callback_url"))?)
        .set_auth_type(AuthType::RequestBody);
        if let Some(secret) = secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose().to_string()));
            if has("client_secret_basic") || !has("client_secret_post") {
                client = client.set_auth_type(AuthType::BasicAuth);
            }
        }
        Ok((client, d))
    }

    /// `_oidc` / `_oidc_challenge`: stores a login transaction and returns the authorization
    /// URL and the binding cookie.
    pub async fn begin(
        &self,
        provider: Option<&str>,
        offline: bool,
        return_to: Option<&str>,
        cookie: &CookieSettings,
    ) -> Result<LoginStart, AuthError> {
        let (name, p) = self.provider(provider)?;
        let return_to = match return_to.filter(|r| !r.is_empty()) {
            None => None,
            Some(r) => Some(self.check_return_to(r)?),
        };
        let (client, _) = self.client(name, p).await?;
        let state = random_token(32);
        let nonce = random_token(32);
        let binding = random_token(32);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut scopes = p.scopes();
        let google = p.issuer.trim_end_matches('/') == "https://accounts.google.com";
        if offline && !google && !scopes.iter().any(|s| s == "offline_access") {
            scopes.push("offline_access".into());
        }
        let (state_c, nonce_c) = (state.clone(), nonce.clone());
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state_c),
                move || Nonce::new(nonce_c),
            )
            .add_scopes(scopes.into_iter().filter(|s| s != "openid").map(Scope::new))
            .set_pkce_challenge(challenge);
        if offline {
            // OpenID Connect Core §11: offline_access needs prompt=consent; Google wants its
            // own access_type=offline instead of the scope
            req = req.add_extra_param("prompt", "consent");
            if google {
                req = req.add_extra_param("access_type", "offline");
            }
        }
        let (url, _, _) = req.url();
        let rec = LoginRecord {
            provider: name.to_string(),
            verifier: verifier.secret().clone(),
            nonce,
            binding: sha256_hex(&binding),
            return_to,
            expires_ms: now_ms() + self.login_ttl.as_millis() as u64,
        };
        self.logins.put(&state, &rec).await?;
        Ok(LoginStart {
            authorization_url: url.to_string(),
            set_cookie: login_cookie(cookie, &binding, self.login_ttl.as_secs()),
        })
    }

    fn check_return_to(&self, r: &str) -> Result<String, AuthError> {
        let u = reqwest::Url::parse(r).map_err(|_| {
            bad_request("return_to must be an absolute http(s) URL on an allowed origin")
        })?;
        let origin = url_origin(&u);
        if !matches!(u.scheme(), "http" | "https")
            || !self
                .config
                .return_to_origins
                .iter()
                .any(|o| o.trim_end_matches('/') == origin)
        {
            return Err(bad_request(format!(
                "return_to: origin {origin} is not in oidc.return_to_origins"
            )));
        }
        Ok(u.to_string())
    }

    /// `_oidc_callback`: takes the transaction (it is used up whatever happens next), checks
    /// the browser binding, exchanges the code with its PKCE verifier, verifies the ID token
    /// (§7b plus nonce and azp) and registers or updates the user.
    pub async fn callback(
        &self,
        q: &CallbackQuery,
        login_cookie: Option<&str>,
        principals: &Principals,
    ) -> Result<Login, AuthError> {
        let rec = match q.state.as_deref().filter(|s| !s.is_empty()) {
            Some(state) => self.logins.take(state).await?,
            None => None,
        };
        if let Some(err) = &q.error {
            let code = error_code(err);
            tracing::debug!(
                error = %code,
                description = q.error_description.as_deref().unwrap_or(""),
                "OpenID Connect login refused by the provider"
            );
            return Err(refused(format!(
                "OpenID Connect login failed at the provider: {code}"
            )));
        }
        let code = q
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| bad_request("Code must be present on oidc callback"))?;
        if q.state.as_deref().is_none_or(str::is_empty) {
            return Err(bad_request(
                "OIDC Auth Failure: the callback has no state parameter",
            ));
        }
        let Some(rec) = rec else {
            return Err(bad_request(
                "OIDC Auth Failure: State mismatch (unknown, expired or already used login; start again at _oidc)",
            ));
        };
        if rec.expires_ms <= now_ms() {
            return Err(bad_request(
                "OIDC Auth Failure: the login expired (5 minutes); start again at _oidc",
            ));
        }
        let bound = login_cookie.is_some_and(|c| {
            let h = sha256_hex(c);
            // constant-time enough: both are hashes of secrets
            h.len() == rec.binding.len()
                && h.bytes()
                    .zip(rec.binding.bytes())
                    .fold(0u8, |a, (x, y)| a | (x ^ y))
                    == 0
        });
        if !bound {
            return Err(bad_request(
                "OIDC Auth Failure: State mismatch (this browser did not start this login; cookies must be enabled)",
            ));
        }
        if q.provider.as_deref().is_some_and(|p| p != rec.provider) {
            return Err(bad_request(
                "Unable to identify provider for callback request",
            ));
        }
        let (name, p) = self.provider(Some(&rec.provider))?;
        let (client, d) = self.client(name, p).await?;
        if let Some(iss) = &q.iss {
            if iss != &p.issuer {
                return Err(bad_request(
                    "OIDC Auth Failure: the authorization response's iss is not this login's provider",
                ));
            }
        } else if d.iss_in_response {
            return Err(bad_request(
                "OIDC Auth Failure: the provider adds iss to its responses but this one has none",
            ));
        }
        let http = self
            .jwt
            .http
            .token_client()
            .map_err(|e| provider_unavailable(name, e))?;
        let code = AuthorizationCode::new(code.to_string());
        let verifier = PkceCodeVerifier::new(rec.verifier.clone());
        let resp = exchange_code(&client, http, code, verifier)
            .await
            .map_err(|e| token_error(name, "code exchange", e))?;
        let nonce = Nonce::new(rec.nonce.clone());
        let mut login = self
            .finish(name, p, &client, &resp, Some(&nonce), principals)
            .await?;
        login.return_to = rec.return_to;
        Ok(login)
    }

    /// `_oidc_refresh`: a new ID token (and the rotated refresh token) for a refresh token.
    pub async fn refresh(
        &self,
        provider: Option<&str>,
        refresh_token: &str,
        principals: &Principals,
    ) -> Result<Login, AuthError> {
        if refresh_token.is_empty() {
            return Err(bad_request(
                "Refresh token must be present for oidc refresh",
            ));
        }
        let (name, p) = self.provider(provider)?;
        let (client, _) = self.client(name, p).await?;
        let http = self
            .jwt
            .http
            .token_client()
            .map_err(|e| provider_unavailable(name, e))?;
        let token = RefreshToken::new(refresh_token.to_string());
        let resp = exchange_refresh(&client, http, &token)
            .await
            .map_err(|e| token_error(name, "token refresh", e))?;
        self.finish(name, p, &client, &resp, None, principals).await
    }

    /// Verifies the token response's ID token and registers or updates its user.
    async fn finish(
        &self,
        name: &str,
        p: &OidcProviderConfig,
        client: &Client,
        resp: &CoreTokenResponse,
        nonce: Option<&Nonce>,
        principals: &Principals,
    ) -> Result<Login, AuthError> {
        let id_token = resp.id_token().ok_or_else(|| {
            AuthError::BadGateway(format!(
                "OpenID Connect provider \"{name}\" returned no id_token"
            ))
        })?;
        let raw = id_token.to_string();
        let now = super::unix_now();
        // §7b: signature (unless allow_unsigned_provider_tokens), alg, iss, aud, exp, nbf,
        // iat, sub, user name and claims
        let identity = self
            .jwt
            .verify_for_provider(name, &raw, p.allow_unsigned_provider_tokens, now)
            .await
            .map_err(|e| match e {
                JwtError::ProviderUnavailable(_) => provider_unavailable(name, e),
                e => refused(format!("Invalid login: ID token: {e}")),
            })?;
        // plus OpenID Connect Core §3.1.3.7: azp (required with several audiences, must be
        // our client_id) and the nonce of this login
        let verifier: CoreIdTokenVerifier = client
            .id_token_verifier()
            .insecure_disable_signature_check()
            .require_issuer_match(false)
            .set_other_audience_verifier_fn(|_| true)
            .set_time_fn(move || {
                chrono::DateTime::from_timestamp(now, 0).unwrap_or_default()
                    - chrono::Duration::seconds(60)
            });
        let claims = match nonce {
            Some(n) => id_token.claims(&verifier, n),
            // a refreshed ID token carries the original nonce, if any: not checkable here
            None => id_token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
        }
        .map_err(|e| refused(format!("Invalid login: ID token: {e}")))?;
        // openidconnect leaves azp to us (OpenID Connect Core §3.1.3.7 steps 4-5)
        match claims.authorized_party() {
            Some(azp) if azp.as_str() != p.client_id => {
                return Err(refused(
                    "Invalid login: ID token: its authorized party (azp) is another client",
                ))
            }
            None if claims.audiences().len() > 1 => {
                return Err(refused(
                    "Invalid login: ID token: several audiences and no authorized party (azp)",
                ))
            }
            _ => {}
        }
        apply_login(&identity, principals).await?;
        let include = p.include_access;
        Ok(Login {
            id_token: raw,
            refresh_token: resp.refresh_token().map(|t| t.secret().clone()),
            access_token: include.then(|| resp.access_token().secret().clone()),
            token_type: include.then(|| resp.token_type().as_ref().to_string()),
            expires_in: if include {
                resp.expires_in().map(|d| d.as_secs())
            } else {
                None
            },
            username: identity.username.clone(),
            session_ttl: identity
                .expires_at
                .map(|e| Duration::from_secs(e.saturating_sub(now).max(1) as u64)),
            return_to: None,
            disable_session: p.disable_session,
        })
    }
}

/// Registers or updates the token's user as a Bearer token would, but refuses a disabled
/// user before anything is written (SPEC §6: disabled users are refused on every path).
async fn apply_login(id: &JwtIdentity, principals: &Principals) -> Result<(), AuthError> {
    if let Some(u) = principals.load(&id.username).await? {
        if u.record.disabled {
            return Err(refused("Invalid login: user is disabled"));
        }
    }
    super::bearer::apply(id, principals).await
}

/// `Set-Cookie` for the login binding (`max_age` 0 clears it).
pub fn login_cookie(cookie: &CookieSettings, value: &str, max_age: u64) -> String {
    let mut c = format!(
        "{LOGIN_COOKIE}={value}; Path={}; Max-Age={max_age}; HttpOnly; SameSite=Lax",
        cookie.path
    );
    if cookie.secure {
        c.push_str("; Secure");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncgate_storage::Store;

    fn store() -> (tempfile::TempDir, Arc<dyn DatabaseStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db: Arc<dyn DatabaseStore> = store.database("db").unwrap();
        (dir, db)
    }

    fn rec(expires_ms: u64) -> LoginRecord {
        LoginRecord {
            provider: "kc".into(),
            verifier: random_token(32),
            nonce: random_token(32),
            binding: sha256_hex("cookie"),
            return_to: None,
            expires_ms,
        }
    }

    #[tokio::test]
    async fn transactions_are_single_use_and_keyed_by_a_hash() {
        let (_d, db) = store();
        let s = LoginStore::new(db.clone(), b"k".to_vec());
        let state = random_token(32);
        let r = rec(now_ms() + 1000);
        s.put(&state, &r).await.unwrap();
        let stored = db.list_logins().await.unwrap();
        assert_eq!(stored.len(), 1);
        assert!(
            !stored[0].0.contains(&state),
            "the store never sees the state"
        );
        // another server key finds nothing
        assert_eq!(
            LoginStore::new(db.clone(), b"other".to_vec())
                .take(&state)
                .await
                .unwrap(),
            None
        );
        assert_eq!(s.take("another-state").await.unwrap(), None);
        assert_eq!(s.take(&state).await.unwrap(), Some(r));
        assert_eq!(s.take(&state).await.unwrap(), None, "replay");
        assert_eq!(s.count().await.unwrap(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_takes_get_one_record() {
        let (_d, db) = store();
        let s = Arc::new(LoginStore::new(db, b"k".to_vec()));
        s.put("st", &rec(now_ms() + 1000)).await.unwrap();
        let takes: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.take("st").await.unwrap().is_some() as usize })
            })
            .collect();
        let mut hits = 0;
        for t in takes {
            hits += t.await.unwrap();
        }
        assert_eq!(hits, 1);
    }

    #[tokio::test]
    async fn expired_and_corrupt_transactions_are_collected() {
        let (_d, db) = store();
        let s = LoginStore::new(db.clone(), b"k".to_vec());
        s.put("old", &rec(1_000)).await.unwrap();
        s.put("new", &rec(10_000)).await.unwrap();
        db.put_login("junk", b"{".to_vec()).await.unwrap();
        assert_eq!(s.collect(5_000).await.unwrap(), 2);
        assert_eq!(s.count().await.unwrap(), 1);
        assert!(s.take("new").await.unwrap().is_some());
        // a corrupt record met by take is an error naming it, never a default
        db.put_login(&s.storage_key("bad"), b"[]".to_vec())
            .await
            .unwrap();
        let e = s.take("bad").await.unwrap_err().to_string();
        assert!(e.contains("login transaction does not decode"), "{e}");
    }

    /// The callback's state checks, which come before any request to the provider (its
    /// issuer here is a port nothing listens on).
    #[tokio::test]
    async fn callback_state_handling() {
        let (_d, db) = store();
        let cfg: OidcConfig = serde_json::from_value(serde_json::json!({"providers": {"kc": {
            "issuer": "http://127.0.0.1:9/realms/r", "client_id": "app",
            "callback_url": "http://127.0.0.1:4984/db/_oidc_callback"}}}))
        .unwrap();
        let jwt = Arc::new(JwtAuth::new(Some(&cfg), None).unwrap().unwrap());
        let flow = CodeFlow::new("db", Some(&cfg), Some(jwt), db.clone(), b"k".to_vec()).unwrap();
        let principals = Principals::new(db);
        let q = |state: &str| CallbackQuery {
            code: Some("c".into()),
            state: Some(state.into()),
            ..Default::default()
        };
        let reason = |r: Result<Login, AuthError>| match r {
            Err(AuthError::BadRequest(m)) => m,
            other => panic!("expected a 400, got {other:?}"),
        };
        let put = async |state: &str, expires_ms: u64| {
            flow.logins().put(state, &rec(expires_ms)).await.unwrap()
        };
        // unknown state
        let m = reason(flow.callback(&q("nope"), Some("cookie"), &principals).await);
        assert!(m.contains("State mismatch"), "{m}");
        // another browser's cookie: refused, and the transaction is used up
        put("s1", now_ms() + 60_000).await;
        let m = reason(flow.callback(&q("s1"), Some("other"), &principals).await);
        assert!(m.contains("did not start this login"), "{m}");
        let m = reason(flow.callback(&q("s1"), Some("cookie"), &principals).await);
        assert!(m.contains("already used"), "{m}");
        // no cookie at all
        put("s2", now_ms() + 60_000).await;
        let m = reason(flow.callback(&q("s2"), None, &principals).await);
        assert!(m.contains("cookies must be enabled"), "{m}");
        // expired
        put("s3", now_ms() - 1).await;
        let m = reason(flow.callback(&q("s3"), Some("cookie"), &principals).await);
        assert!(m.contains("expired"), "{m}");
        // another provider named on the callback (mix-up)
        put("s4", now_ms() + 60_000).await;
        let mut mixed = q("s4");
        mixed.provider = Some("other".into());
        let m = reason(flow.callback(&mixed, Some("cookie"), &principals).await);
        assert!(m.contains("Unable to identify provider"), "{m}");
        // a provider error uses up the transaction too, and is a 401 naming the error
        put("s5", now_ms() + 60_000).await;
        let mut denied = q("s5");
        denied.code = None;
        denied.error = Some("access_denied".into());
        match flow.callback(&denied, Some("cookie"), &principals).await {
            Err(AuthError::Unauthorized { reason, .. }) => {
                assert!(reason.contains("access_denied"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(flow.logins().count().await.unwrap(), 0);
        // the right state and cookie get past the state checks to the provider (down here)
        put("s6", now_ms() + 60_000).await;
        match flow.callback(&q("s6"), Some("cookie"), &principals).await {
            Err(AuthError::BadGateway(m)) => assert!(m.contains("unavailable"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn random_values_and_cookie() {
        let a = random_token(32);
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token(32));
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let c = CookieSettings {
            name: "SyncGatewaySession".into(),
            path: "/db".into(),
            secure: true,
            http_only: true,
            same_site: crate::SameSite::None,
        };
        assert_eq!(
            login_cookie(&c, "v", 300),
            "syncgate_oidc_login=v; Path=/db; Max-Age=300; HttpOnly; SameSite=Lax; Secure"
        );
        assert_eq!(error_code("access_denied\"<x>"), "access_deniedx");
        assert_eq!(error_code("\u{1}"), "unknown_error");
    }
}
