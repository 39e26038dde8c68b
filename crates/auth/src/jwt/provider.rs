//! One configured JWT provider (OpenID Connect or `local_jwt`) and its verification steps.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::config::{LocalJwtConfig, OidcConfig, DEFAULT_LEEWAY_SECS};
use super::keys::{Alg, VerifyKey};
use super::remote::{Discovered, Discovery, Http, KeySnapshot, RemoteKeySet};
use super::token::{self, Jws, TimeRules};
use super::{JwtError, JwtIdentity};

/// OpenID Connect tokens get this much clock skew on `exp`/`nbf`/`iat`.
const OIDC_LEEWAY_SECS: i64 = 60;

/// Where a provider's keys come from.
pub(crate) enum KeySource {
    /// `local_jwt` with `keys`/`pem`/`hmac_secret`.
    Static {
        algs: Vec<Alg>,
        keys: Arc<KeySnapshot>,
    },
    /// `local_jwt` with `jwks_uri`.
    Jwks {
        algs: Vec<Alg>,
        remote: RemoteKeySet,
    },
    /// OpenID Connect: discovery, then its `jwks_uri`.
    Oidc(Discovery),
}

pub struct Provider {
    pub name: String,
    pub is_oidc: bool,
    /// The `iss` tokens must carry; `None` for a `local_jwt` provider in CouchDB mode, which
    /// does not check `iss` and takes the tokens its keys verify.
    pub issuer: Option<String>,
    /// What the provider's users record as `jwt_issuer`: the issuer, or `local_jwt:<name>`
    /// for an issuer-less provider (a URL scheme cannot contain `_`, so this never equals a
    /// URL issuer).
    pub issuer_id: String,
    /// Expected audience; `None` (local `client_id: ""`) skips the audience check.
    pub client_id: Option<String>,
    pub register: bool,
    user_prefix: Option<String>,
    username_claim: Option<String>,
    roles_claim: Option<String>,
    channels_claim: Option<String>,
    required_claims: Vec<String>,
    leeway: i64,
    skip_expiry: bool,
    pub(crate) keys: KeySource,
}

impl Provider {
    pub fn oidc(cfg: &OidcConfig) -> Vec<Provider> {
        cfg.providers
            .iter()
            .map(|(name, p)| Provider {
                name: name.clone(),
                is_oidc: true,
                issuer: Some(p.issuer.clone()),
                issuer_id: p.issuer.clone(),
                client_id: Some(p.client_id.clone()),
                register: p.register,
                user_prefix: p.user_prefix.clone(),
                username_claim: p.username_claim.clone(),
                roles_claim: p.roles_claim.clone(),
                channels_claim: p.channels_claim.clone(),
                required_claims: Vec::new(),
                leeway: OIDC_LEEWAY_SECS,
                skip_expiry: false,
                keys: KeySource::Oidc(Discovery::new(&p.issuer, p.discovery_url.as_deref())),
            })
            .collect()
    }

    pub fn local(name: &str, p: &LocalJwtConfig) -> Result<Provider, String> {
        let algs = p.parsed_algorithms()?;
        let keys = match &p.jwks_uri {
            Some(u) => KeySource::Jwks {
                algs,
                remote: RemoteKeySet::new(u.clone()),
            },
            None => KeySource::Static {
                algs,
                keys: Arc::new(KeySnapshot::new(p.static_keys()?, true)),
            },
        };
        Ok(Provider {
            name: name.to_string(),
            is_oidc: false,
            issuer: p.issuer.clone(),
            issuer_id: p
                .issuer
                .clone()
                .unwrap_or_else(|| format!("local_jwt:{name}")),
            client_id: p.client_id.clone().filter(|c| !c.is_empty()),
            register: p.register,
            user_prefix: p.user_prefix.clone(),
            username_claim: p.username_claim.clone(),
            roles_claim: p.roles_claim.clone(),
            channels_claim: p.channels_claim.clone(),
            required_claims: p.required_claims.clone(),
            leeway: p.leeway_secs.unwrap_or(DEFAULT_LEEWAY_SECS) as i64,
            skip_expiry: p.skip_expiry_check,
            keys,
        })
    }

    /// Whether a token with this `iss` and `aud` is for this provider (SG's `ValidFor`).
    /// Issuer-less providers are matched by key instead (see [`super::JwtAuth`]).
    pub fn valid_for(&self, iss: &str, aud: &[&str]) -> bool {
        self.issuer.as_deref() == Some(iss)
            && match &self.client_id {
                None => true,
                Some(c) => aud.contains(&c.as_str()),
            }
    }

    /// Whether one of the provider's static keys carries this `kid` (remote key sets are
    /// not consulted: that would cost a fetch).
    pub fn has_static_kid(&self, kid: &str) -> bool {
        match &self.keys {
            KeySource::Static { keys, .. } => {
                keys.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
            }
            _ => false,
        }
    }

    /// The generation of the keys a token would be verified with now (0 before any fetch).
    pub fn generation(&self) -> u64 {
        match &self.keys {
            KeySource::Static { keys, .. } => keys.generation,
            KeySource::Jwks { remote, .. } => remote.current().generation,
            KeySource::Oidc(d) => d.current().map_or(0, |d| d.keys.current().generation),
        }
    }

    /// Verifies signature and claims; returns the identity and the key generation used.
    pub async fn verify(
        &self,
        jws: &Jws<'_>,
        http: &Http,
        now: i64,
    ) -> Result<(JwtIdentity, u64), JwtError> {
        // checks that need no keys come first: a wrong token costs no fetch
        self.check_hmac_for_oidc(jws)?;
        self.check_issuer_and_audience(jws)?;
        let generation = self.verify_key(jws, http).await?;
        Ok((self.identity(jws, now)?, generation))
    }

    /// An ID token from this provider's token endpoint (code flow): as [`Provider::verify`],
    /// with the signature skipped when `skip_signature`.
    pub async fn verify_issued(
        &self,
        jws: &Jws<'_>,
        http: &Http,
        now: i64,
        skip_signature: bool,
    ) -> Result<JwtIdentity, JwtError> {
        self.check_hmac_for_oidc(jws)?;
        self.check_issuer_and_audience(jws)?;
        if !skip_signature {
            self.verify_key(jws, http).await?;
        }
        self.identity(jws, now)
    }

    /// The discovery document (OpenID providers only).
    pub async fn discovered(&self, http: &Http) -> Result<Arc<Discovered>, JwtError> {
        match &self.keys {
            KeySource::Oidc(d) => d.get(http).await,
            _ => Err(JwtError::ProviderUnavailable(format!(
                "{} is not an OpenID Connect provider",
                self.name
            ))),
        }
    }

    /// Shared-secret algorithms are never accepted for OpenID Connect.
    fn check_hmac_for_oidc(&self, jws: &Jws<'_>) -> Result<(), JwtError> {
        if self.is_oidc && jws.alg.is_hmac() {
            return Err(JwtError::AlgNotAllowed(jws.alg.name().into()));
        }
        Ok(())
    }

    /// `iss` (when the provider has an issuer) and `aud` (when it has a client_id).
    pub fn check_issuer_and_audience(&self, jws: &Jws<'_>) -> Result<(), JwtError> {
        if let Some(iss) = &self.issuer {
            if jws.issuer() != Some(iss.as_str()) {
                return Err(JwtError::UnknownIssuer);
            }
        }
        if let Some(c) = &self.client_id {
            if !jws.audiences().contains(&c.as_str()) {
                return Err(JwtError::WrongAudience);
            }
        }
        Ok(())
    }

    /// The algorithm allow-list and the signature; returns the key generation used.
    pub async fn verify_key(&self, jws: &Jws<'_>, http: &Http) -> Result<u64, JwtError> {
        self.check_hmac_for_oidc(jws)?;
        // CouchDB mode: a token `kid` that names no key falls back to every key of its type
        // (PEM keys have no kid); with an issuer, an unknown kid stays unknown (SG)
        let kid_fallback = self.issuer.is_none();
        Ok(match &self.keys {
            KeySource::Static { algs, keys } => {
                allowed(algs, jws.alg)?;
                check_signature(&keys.keys, jws, kid_fallback)?;
                keys.generation
            }
            KeySource::Jwks { algs, remote } => {
                allowed(algs, jws.alg)?;
                verify_remote(remote, http, jws, kid_fallback).await?
            }
            KeySource::Oidc(discovery) => {
                let d = discovery.get(http).await?;
                allowed(&d.algs, jws.alg)?;
                verify_remote(&d.keys, http, jws, false).await?
            }
        })
    }

    /// The claim checks after the signature, and who the token says the caller is.
    pub fn identity(&self, jws: &Jws<'_>, now: i64) -> Result<JwtIdentity, JwtError> {
        let exp = token::check_times_and_subject(
            &jws.claims,
            TimeRules {
                now,
                leeway: self.leeway,
                skip_expiry: self.skip_expiry,
            },
        )?;
        for c in &self.required_claims {
            match token::claim(&jws.claims, c) {
                None | Some(Value::Null) => return Err(JwtError::MissingClaim(c.clone())),
                Some(_) => {}
            }
        }
        let username = token::username(
            &jws.claims,
            self.user_prefix.as_deref(),
            self.username_claim.as_deref(),
            self.issuer.as_deref(),
            &self.name,
        )?;
        let identity = JwtIdentity {
            provider: self.name.clone(),
            issuer: self.issuer_id.clone(),
            username,
            email: jws
                .claims
                .get("email")
                .and_then(Value::as_str)
                .map(str::to_string),
            roles: token::string_set(&jws.claims, self.roles_claim.as_deref(), "roles claim")?,
            channels: token::string_set(
                &jws.claims,
                self.channels_claim.as_deref(),
                "channels claim",
            )?,
            register: self.register,
            expires_at: if self.skip_expiry {
                None
            } else {
                exp.map(|e| e.saturating_add(self.leeway))
            },
        };
        Ok(identity)
    }
}

fn allowed(algs: &[Alg], alg: Alg) -> Result<(), JwtError> {
    if algs.contains(&alg) {
        Ok(())
    } else {
        Err(JwtError::AlgNotAllowed(alg.name().into()))
    }
}

/// Tries the keys that fit the token's `alg` and `kid` (keys without a kid fit any kid).
/// With `kid_fallback`, a token `kid` that selects no key tries every key of the `alg`'s type.
fn check_signature(keys: &[VerifyKey], jws: &Jws<'_>, kid_fallback: bool) -> Result<(), JwtError> {
    let by_kid = |k: &&VerifyKey| {
        k.accepts(jws.alg)
            && match (&jws.kid, &k.kid) {
                (Some(t), Some(k)) => t == k,
                _ => true,
            }
    };
    let mut candidates: Vec<&VerifyKey> = keys.iter().filter(by_kid).collect();
    if candidates.is_empty() && kid_fallback {
        candidates = keys.iter().filter(|k| k.accepts(jws.alg)).collect();
    }
    if candidates.is_empty() {
        return Err(JwtError::NoKey);
    }
    let input = jws.signing_input.as_bytes();
    if candidates
        .iter()
        .any(|k| k.verify(jws.alg, input, jws.signature))
    {
        Ok(())
    } else {
        Err(JwtError::BadSignature)
    }
}

/// Verifies against a remote key set; on a miss (unknown `kid`, or keys that may have been
/// rotated under the same `kid`) refetches once — coalesced and rate-limited — and retries
/// if the keys changed.
async fn verify_remote(
    remote: &RemoteKeySet,
    http: &Http,
    jws: &Jws<'_>,
    kid_fallback: bool,
) -> Result<u64, JwtError> {
    let snap = remote.keys(http).await?;
    let seen = remote.attempts();
    match check_signature(&snap.keys, jws, kid_fallback) {
        Ok(()) => Ok(snap.generation),
        Err(e) => {
            let fresh = remote.refresh(http, seen).await?;
            if fresh.generation == snap.generation {
                return Err(e);
            }
            check_signature(&fresh.keys, jws, kid_fallback)?;
            Ok(fresh.generation)
        }
    }
}

/// Builds every provider of a database; errors are config sentences.
pub fn build(
    oidc: Option<&OidcConfig>,
    local: Option<&BTreeMap<String, LocalJwtConfig>>,
) -> Result<Vec<Provider>, String> {
    let mut out = Vec::new();
    if let Some(o) = oidc {
        out.extend(Provider::oidc(o));
    }
    for (name, p) in local.into_iter().flatten() {
        out.push(Provider::local(name, p).map_err(|e| format!("local_jwt.{name}.{e}"))?);
    }
    Ok(out)
}
