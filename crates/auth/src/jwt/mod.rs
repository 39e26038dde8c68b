//! Bearer tokens: OpenID Connect ID tokens (implicit flow) and static-key JWTs (`local_jwt`).
//!
//! - [`config`]: the `oidc` and `local_jwt` config blocks and their validation.
//! - [`keys`]: algorithms and verification keys (JWK, PEM, HMAC); ES512 via `p521`.
//! - [`token`]: compact JWS parsing, claim checks, user names, claim paths.
//! - [`remote`]: discovery and JWKS fetching with caching, coalescing and rate limits.
//! - [`cache`]: verified tokens, keyed by a hash of the token.
//! - [`provider`]: one provider's verification pipeline.
//! - [`bearer`]: the authenticator hook: token → registered/updated user.
//!
//! [`JwtAuth`] ties them together for one database: it picks the provider a token is for
//! (by `iss` and `aud`, as SG; a token without `iss`, or with one no provider claims, by the
//! key that verifies it among the `local_jwt` providers without `issuer` — CouchDB mode),
//! verifies it, and returns a [`JwtIdentity`]; as the authenticator's [`crate::BearerAuth`]
//! it also registers or updates the user. The authenticator then loads the user and refuses
//! it if disabled.

pub mod bearer;
pub mod cache;
pub mod code_flow;
pub mod config;
pub mod keys;
pub mod provider;
pub mod remote;
pub mod token;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use config::{LocalJwtConfig, OidcConfig, OidcProviderConfig};

use cache::{token_key, TokenCache, DEFAULT_CAPACITY, NO_EXP_TTL_SECS};
use provider::Provider;
use remote::Http;
use token::Jws;

/// Why a Bearer token was refused. The text names the failed check, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("alg \"none\" (unsigned token) is never accepted")]
    AlgNone,
    #[error("alg {0:?} is not accepted by this provider")]
    AlgNotAllowed(String),
    #[error("token has no iss claim")]
    MissingIss,
    #[error("token issuer is not a configured provider")]
    UnknownIssuer,
    #[error("token audience (aud) does not contain the provider's client_id")]
    WrongAudience,
    #[error("no key of the provider matches the token's kid and alg")]
    NoKey,
    #[error("signature verification failed")]
    BadSignature,
    #[error("token has no exp claim")]
    MissingExp,
    #[error("token expired (exp)")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("token issued in the future (iat)")]
    IssuedInFuture,
    #[error("token has no sub claim (or it is empty)")]
    MissingSub,
    #[error("required claim {0:?} is missing")]
    MissingClaim(String),
    #[error("{0} {1}")]
    BadClaim(&'static str, &'static str),
    #[error("identity provider unavailable: {0}")]
    ProviderUnavailable(String),
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtIdentity {
    /// The provider's config name.
    pub provider: String,
    /// The provider's issuer, or `local_jwt:<name>` for an issuer-less provider (stored as
    /// the user's `jwt_issuer`).
    pub issuer: String,
    /// The syncgate user name (SG's derivation; `sub` verbatim in CouchDB mode).
    pub username: String,
    /// The `email` claim when it is a string.
    pub email: Option<String>,
    /// `roles_claim` values (`jwt_roles`); empty when the claim is absent or not configured.
    pub roles: BTreeSet<String>,
    /// `channels_claim` values (`jwt_channels`).
    pub channels: BTreeSet<String>,
    /// Whether an unknown user is created (`register`).
    pub register: bool,
    /// Unix seconds after which the token is refused (`exp` + leeway).
    pub expires_at: Option<i64>,
}

/// Where a token goes after [`JwtAuth::select`].
enum Selected {
    /// The provider its `iss` (or the database's only provider) names.
    One(usize),
    /// Issuer-less providers, in the order to try their keys.
    ByKey(Vec<usize>),
}

/// The JWT providers of one database.
pub struct JwtAuth {
    providers: Vec<Provider>,
    oidc_count: usize,
    http: Http,
    cache: TokenCache,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl JwtAuth {
    /// Builds the providers; `Ok(None)` when the database has none. Errors are config
    /// sentences (the config was validated before, so they are not expected here).
    pub fn new(
        oidc: Option<&OidcConfig>,
        local: Option<&BTreeMap<String, LocalJwtConfig>>,
    ) -> Result<Option<JwtAuth>, String> {
        let providers = provider::build(oidc, local)?;
        if providers.is_empty() {
            return Ok(None);
        }
        Ok(Some(JwtAuth {
            oidc_count: providers.iter().filter(|p| p.is_oidc).count(),
            providers,
            http: Http::default(),
            cache: TokenCache::new(DEFAULT_CAPACITY),
        }))
    }

    /// Whether `issuer` belongs to a configured provider (a user whose `jwt_issuer` is gone
    /// loses its JWT grants).
    pub fn has_issuer(&self, issuer: &str) -> bool {
        self.providers.iter().any(|p| p.issuer_id == issuer)
    }

    /// Verifies a Bearer token.
    pub async fn verify(&self, token: &str) -> Result<Arc<JwtIdentity>, JwtError> {
        self.verify_at(token, unix_now()).await
    }

    /// [`JwtAuth::verify`] at a given time (Unix seconds).
    pub async fn verify_at(&self, token: &str, now: i64) -> Result<Arc<JwtIdentity>, JwtError> {
        let key = token_key(token);
        if let Some(id) = self.cache.get(&key, now, |i| {
            self.providers.get(i).map_or(u64::MAX, Provider::generation)
        }) {
            return Ok(id);
        }
        let jws = Jws::parse(token)?;
        let (index, identity, generation) = match self.select(&jws)? {
            Selected::One(index) => {
                let (identity, generation) =
                    self.providers[index].verify(&jws, &self.http, now).await?;
                (index, identity, generation)
            }
            Selected::ByKey(candidates) => self.verify_by_key(&jws, &candidates, now).await?,
        };
        let identity = Arc::new(identity);
        let valid_until = identity.expires_at.unwrap_or(now + NO_EXP_TTL_SECS);
        self.cache
            .insert(key, identity.clone(), index, generation, valid_until, now);
        Ok(identity)
    }

    /// Picks the provider a token is for, as SG: a single OpenID provider (and no local
    /// ones) takes every token; otherwise the first OpenID provider, then the first local
    /// one, whose issuer equals `iss` and whose client_id is in `aud`. A token whose `iss`
    /// is some provider's but whose `aud` is not is refused. A token without `iss`, or with
    /// an `iss` no provider has, goes to the issuer-less `local_jwt` providers (CouchDB
    /// mode does not check `iss`), those with a key named by the token's `kid` first.
    fn select(&self, jws: &Jws<'_>) -> Result<Selected, JwtError> {
        let iss = jws.issuer();
        if let Some(iss) = iss {
            if self.oidc_count == 1 && self.providers.len() == 1 {
                return Ok(Selected::One(0));
            }
            let aud = jws.audiences();
            if let Some(i) = self.providers.iter().position(|p| p.valid_for(iss, &aud)) {
                return Ok(Selected::One(i));
            }
            if self
                .providers
                .iter()
                .any(|p| p.issuer.as_deref() == Some(iss))
            {
                return Err(JwtError::WrongAudience);
            }
        }
        let issuerless = self
            .providers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.issuer.is_none());
        let (mut named, mut others): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
        for (i, p) in issuerless {
            match &jws.kid {
                Some(kid) if p.has_static_kid(kid) => named.push(i),
                _ => others.push(i),
            }
        }
        named.append(&mut others);
        match (named.len(), iss) {
            (0, None) => Err(JwtError::MissingIss),
            (0, Some(_)) => Err(JwtError::UnknownIssuer),
            (1, _) => Ok(Selected::One(named[0])),
            _ => Ok(Selected::ByKey(named)),
        }
    }

    /// Tries the issuer-less providers' keys in order; the first whose key verifies the
    /// token is its provider, and that provider's `aud` and claim checks decide. When no key
    /// does, the refusal says how far the closest one got (an unavailable key set over a bad
    /// signature over no key of that type and kid over a refused algorithm).
    async fn verify_by_key(
        &self,
        jws: &Jws<'_>,
        candidates: &[usize],
        now: i64,
    ) -> Result<(usize, JwtIdentity, u64), JwtError> {
        fn rank(e: &JwtError) -> u8 {
            match e {
                JwtError::ProviderUnavailable(_) => 4,
                JwtError::BadSignature => 3,
                JwtError::NoKey => 2,
                _ => 1,
            }
        }
        let mut best: Option<JwtError> = None;
        for &i in candidates {
            let p = &self.providers[i];
            match p.verify_key(jws, &self.http).await {
                Ok(generation) => {
                    p.check_issuer_and_audience(jws)?;
                    return Ok((i, p.identity(jws, now)?, generation));
                }
                Err(e) => {
                    if best.as_ref().is_none_or(|b| rank(&e) > rank(b)) {
                        best = Some(e);
                    }
                }
            }
        }
        Err(best.unwrap_or(JwtError::NoKey))
    }

    /// The discovery document of the OpenID provider `name` (fetched or cached).
    pub async fn discovered(&self, name: &str) -> Result<Arc<remote::Discovered>, JwtError> {
        let p = self
            .providers
            .iter()
            .find(|p| p.is_oidc && p.name == name)
            .ok_or(JwtError::UnknownIssuer)?;
        p.discovered(&self.http).await
    }

    /// Verifies an ID token the OpenID provider `name` issued to us (code flow): the §7b
    /// checks of that provider, without the signature when `skip_signature`
    /// (`allow_unsigned_provider_tokens`). The token is not cached.
    pub async fn verify_for_provider(
        &self,
        name: &str,
        token: &str,
        skip_signature: bool,
        now: i64,
    ) -> Result<JwtIdentity, JwtError> {
        let p = self
            .providers
            .iter()
            .find(|p| p.is_oidc && p.name == name)
            .ok_or(JwtError::UnknownIssuer)?;
        let jws = Jws::parse(token)?;
        p.verify_issued(&jws, &self.http, now, skip_signature).await
    }

    /// Verified tokens currently cached.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests;
