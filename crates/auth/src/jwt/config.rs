//! The `oidc` and `local_jwt` blocks of a database config, and their validation.
//!
//! Unknown keys are rejected by serde (`deny_unknown_fields`); [`OidcConfig::validate`] and
//! [`validate_local_jwt`] check values and return one sentence naming the JSON path.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::keys::{Alg, VerifyKey};

/// A secret string from the config (an HMAC key): never printed, never serialized back.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// `oidc`: OpenID Connect providers whose ID tokens are accepted as Bearer tokens.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider used when none is named (SG's `_oidc` endpoints); must name a provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_provider: Option<String>,
    #[serde(default)]
    pub providers: BTreeMap<String, OidcProviderConfig>,
    /// Origins (`scheme://host[:port]`) a code-flow login may send the browser back to with
    /// `_oidc?return_to=`; any other `return_to` is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub return_to_origins: Vec<String>,
}

/// One OpenID Connect provider.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProviderConfig {
    /// Must equal the token's `iss` and the discovery document's `issuer`.
    pub issuer: String,
    /// The expected audience (`aud` must contain it).
    pub client_id: String,
    /// Create unknown users on first login.
    #[serde(default)]
    pub register: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels_claim: Option<String>,
    /// A non-standard discovery document URL (default: issuer + `/.well-known/openid-configuration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_url: Option<String>,
    /// SG's auth-code-flow switch; ignored by Bearer and `POST /_session` (as SG).
    #[serde(default)]
    pub disable_session: bool,
    /// The client secret for the token endpoint (code flow); use `${VAR}`.
    #[serde(default, skip_serializing)]
    pub validation_key: Option<Secret>,
    /// The code flow's `redirect_uri` (`https://host/{db}/_oidc_callback`), exactly as
    /// registered at the provider; the code flow is enabled only when it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// Scopes requested (default `openid email`; `openid` is always sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Vec<String>>,
    /// Code-flow answers also carry the provider's `access_token`.
    #[serde(default)]
    pub include_access: bool,
    /// Code flow only: the ID token from the token endpoint (a direct TLS answer) is not
    /// signature-checked; every other check still applies.
    #[serde(default)]
    pub allow_unsigned_provider_tokens: bool,
}

/// Default scopes of the code flow.
pub const DEFAULT_SCOPES: [&str; 2] = ["openid", "email"];

impl OidcProviderConfig {
    /// The scopes to request: the configured ones (or `openid email`), `openid` first and once.
    pub fn scopes(&self) -> Vec<String> {
        let mut out = vec!["openid".to_string()];
        let wanted: Vec<String> = match &self.scope {
            Some(s) => s.clone(),
            None => DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
        };
        for s in wanted {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

/// The origin of an http(s) URL: `scheme://host[:port]` (default ports left out).
pub fn url_origin(u: &reqwest::Url) -> String {
    u.origin().ascii_serialization()
}

/// One `local_jwt` provider: tokens signed with static keys (or a JWKS URL, no discovery).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalJwtConfig {
    /// When set, the tokens' `iss` must equal it (SG). When absent, `iss` is not checked and
    /// the provider takes tokens its keys verify (CouchDB mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// When set (and not `""`), `aud` must contain it; absent or `""` skips the audience check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Accepted `alg` values.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Public JWKs (and `oct` JWKs for HMAC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<serde_json::Value>>,
    /// A JWKS URL, fetched lazily and cached (exclusive with the static keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Inline PEM public keys (SPKI, or PKCS#1 for RSA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<Vec<String>>,
    /// The HMAC secret as UTF-8 text (use `${VAR}`).
    #[serde(default, skip_serializing)]
    pub hmac_secret: Option<Secret>,
    /// The HMAC secret as standard base64 (CouchDB's `hmac:` form).
    #[serde(default, skip_serializing)]
    pub hmac_secret_base64: Option<Secret>,
    /// Claims that must be present (any value but null).
    #[serde(default)]
    pub required_claims: Vec<String>,
    #[serde(default)]
    pub register: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels_claim: Option<String>,
    /// When true, `exp` and `nbf` are not checked.
    #[serde(default)]
    pub skip_expiry_check: bool,
    /// Clock skew allowed on `exp`/`nbf`/`iat` (default 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway_secs: Option<u64>,
    /// As SG; ignored by Bearer and `POST /_session`.
    #[serde(default)]
    pub disable_session: bool,
}

/// Default clock-skew allowance.
pub const DEFAULT_LEEWAY_SECS: u64 = 60;
/// Largest configurable leeway.
const MAX_LEEWAY_SECS: u64 = 86_400;

pub(crate) fn check_http_url(url: &str) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url).map_err(|_| format!("\"{url}\" is not a valid URL"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!("\"{url}\" must be an http(s) URL"));
    }
    Ok(u)
}

fn check_claim_name(at: &str, key: &str, v: &Option<String>) -> Result<(), String> {
    if let Some(c) = v {
        if c.is_empty() || c.split('.').any(str::is_empty) && !c.contains("://") {
            return Err(format!(
                "{at}.{key}: \"{c}\" is not a claim name or dotted path"
            ));
        }
    }
    Ok(())
}

fn check_prefix(at: &str, p: &Option<String>) -> Result<(), String> {
    if let Some(p) = p {
        if p.contains(['/', ':', ',', '`']) {
            return Err(format!(
                "{at}.user_prefix: \"{p}\" may not contain / : , or a backtick (it starts user names)"
            ));
        }
    }
    Ok(())
}

impl OidcConfig {
    /// Checks values; `at` is the JSON path of the block (e.g. `$.databases.db.oidc`).
    pub fn validate(&self, at: &str) -> Result<(), String> {
        if self.providers.is_empty() {
            return Err(format!(
                "{at}.providers: OpenID Connect is configured but no provider is defined"
            ));
        }
        if let Some(d) = &self.default_provider {
            if !self.providers.contains_key(d) {
                return Err(format!(
                    "{at}.default_provider: \"{d}\" is not one of the providers"
                ));
            }
        }
        for (name, p) in &self.providers {
            let at = format!("{at}.providers.{name}");
            if name.is_empty() || name.contains('_') {
                return Err(format!(
                    "{at}: provider names must be non-empty and may not contain \"_\""
                ));
            }
            if p.issuer.is_empty() {
                return Err(format!("{at}.issuer: missing (the provider's issuer URL)"));
            }
            if p.client_id.is_empty() {
                return Err(format!("{at}.client_id: missing (the expected audience)"));
            }
            match &p.discovery_url {
                Some(d) => {
                    check_http_url(d).map_err(|e| format!("{at}.discovery_url: {e}"))?;
                }
                None => {
                    check_http_url(&p.issuer).map_err(|e| {
                        format!("{at}.issuer: {e} (discovery needs it; or set discovery_url)")
                    })?;
                }
            }
            check_prefix(&at, &p.user_prefix)?;
            check_claim_name(&at, "username_claim", &p.username_claim)?;
            check_claim_name(&at, "roles_claim", &p.roles_claim)?;
            check_claim_name(&at, "channels_claim", &p.channels_claim)?;
            if let Some(c) = &p.callback_url {
                let u = check_http_url(c).map_err(|e| format!("{at}.callback_url: {e}"))?;
                if u.fragment().is_some() {
                    return Err(format!(
                        "{at}.callback_url: a redirect URI may not have a #fragment"
                    ));
                }
                if !u.path().ends_with("/_oidc_callback") {
                    return Err(format!(
                        "{at}.callback_url: \"{c}\" must be this database's _oidc_callback URL \
                         (https://<public host>/<db>/_oidc_callback)"
                    ));
                }
            }
            if let Some(k) = &p.validation_key {
                if k.expose().is_empty() {
                    return Err(format!(
                        "{at}.validation_key: empty (the client secret; leave it out for a public client)"
                    ));
                }
            }
            if let Some(s) = &p.scope {
                for (i, sc) in s.iter().enumerate() {
                    if sc.is_empty()
                        || sc.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\')
                    {
                        return Err(format!("{at}.scope[{i}]: \"{sc}\" is not a scope token"));
                    }
                }
            }
            if p.allow_unsigned_provider_tokens && p.callback_url.is_none() {
                return Err(format!(
                    "{at}.allow_unsigned_provider_tokens: only applies to the code flow (set callback_url)"
                ));
            }
        }
        for (i, o) in self.return_to_origins.iter().enumerate() {
            let u = check_http_url(o).map_err(|e| format!("{at}.return_to_origins[{i}]: {e}"))?;
            if url_origin(&u) != o.trim_end_matches('/') {
                return Err(format!(
                    "{at}.return_to_origins[{i}]: \"{o}\" is not an origin (scheme://host[:port], \
                     no path, default port left out)"
                ));
            }
        }
        Ok(())
    }
}

impl LocalJwtConfig {
    /// Parses the configured algorithms.
    pub fn parsed_algorithms(&self) -> Result<Vec<Alg>, String> {
        let mut out = Vec::new();
        for (i, a) in self.algorithms.iter().enumerate() {
            let alg = Alg::parse(a).ok_or_else(|| {
                if a.eq_ignore_ascii_case("none") {
                    format!("algorithms[{i}]: \"none\" (unsigned tokens) is never accepted")
                } else {
                    format!(
                        "algorithms[{i}]: unknown algorithm \"{a}\" (expected one of {})",
                        Alg::ALL.map(Alg::name).join(", ")
                    )
                }
            })?;
            if !out.contains(&alg) {
                out.push(alg);
            }
        }
        if out.is_empty() {
            return Err("algorithms: at least one algorithm is required".into());
        }
        Ok(out)
    }

    /// Builds the static key set (empty with `jwks_uri`). Errors name the offending member.
    pub fn static_keys(&self) -> Result<Vec<VerifyKey>, String> {
        let mut keys = Vec::new();
        for (i, k) in self.keys.iter().flatten().enumerate() {
            match VerifyKey::from_jwk(k) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {
                    return Err(format!(
                        "keys[{i}]: \"use\" must be \"sig\" (or absent) for a verification key"
                    ))
                }
                Err(e) => return Err(format!("keys[{i}]: {e}")),
            }
        }
        for (i, p) in self.pem.iter().flatten().enumerate() {
            keys.push(VerifyKey::from_pem(p).map_err(|e| format!("pem[{i}]: {e}"))?);
        }
        if let Some(s) = &self.hmac_secret {
            keys.push(
                VerifyKey::hmac(s.expose().as_bytes(), None)
                    .map_err(|e| format!("hmac_secret: {e}"))?,
            );
        }
        if let Some(s) = &self.hmac_secret_base64 {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(s.expose().trim())
                .map_err(|_| "hmac_secret_base64: not valid base64".to_string())?;
            keys.push(VerifyKey::hmac(&raw, None).map_err(|e| format!("hmac_secret_base64: {e}"))?);
        }
        Ok(keys)
    }

    fn validate_inner(&self) -> Result<(), String> {
        if self.issuer.as_deref() == Some("") {
            return Err(
                "issuer: empty (set the tokens' iss, or leave issuer out to accept tokens without \
                 an iss check, as CouchDB)"
                    .into(),
            );
        }
        let algs = self.parsed_algorithms()?;
        let has_static = self.keys.is_some()
            || self.pem.is_some()
            || self.hmac_secret.is_some()
            || self.hmac_secret_base64.is_some();
        if let Some(u) = &self.jwks_uri {
            if has_static {
                return Err(
                    "jwks_uri: use either jwks_uri or static keys (keys, pem, hmac_secret), not both"
                        .into(),
                );
            }
            check_http_url(u).map_err(|e| format!("jwks_uri: {e}"))?;
        } else {
            if !has_static {
                return Err(
                    "no keys: set one of keys, pem, hmac_secret, hmac_secret_base64 or jwks_uri"
                        .into(),
                );
            }
            let keys = self.static_keys()?;
            if keys.is_empty() {
                return Err("keys: no key is configured".into());
            }
            for a in &algs {
                if !keys.iter().any(|k| k.accepts(*a)) {
                    return Err(format!(
                        "algorithms: {a} is listed but no configured key is a {}",
                        a.key_type()
                    ));
                }
            }
            for (i, k) in keys.iter().enumerate() {
                if !algs.iter().any(|a| k.accepts(*a)) {
                    return Err(format!(
                        "key #{} (a {}) fits none of the listed algorithms",
                        i + 1,
                        k.key_type
                    ));
                }
            }
        }
        if let Some(l) = self.leeway_secs {
            if l > MAX_LEEWAY_SECS {
                return Err(format!("leeway_secs: at most {MAX_LEEWAY_SECS}"));
            }
        }
        for (i, c) in self.required_claims.iter().enumerate() {
            if c.is_empty() {
                return Err(format!("required_claims[{i}]: empty claim name"));
            }
        }
        Ok(())
    }
}

/// Validates a `local_jwt` block; `at` is its JSON path.
pub fn validate_local_jwt(
    providers: &BTreeMap<String, LocalJwtConfig>,
    at: &str,
) -> Result<(), String> {
    for (name, p) in providers {
        let at = format!("{at}.{name}");
        if name.is_empty() {
            return Err(format!("{at}: provider names must be non-empty"));
        }
        p.validate_inner().map_err(|e| format!("{at}.{e}"))?;
        check_prefix(&at, &p.user_prefix)?;
        check_claim_name(&at, "username_claim", &p.username_claim)?;
        check_claim_name(&at, "roles_claim", &p.roles_claim)?;
        check_claim_name(&at, "channels_claim", &p.channels_claim)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::keys::tests::*;
    use super::*;
    use serde_json::json;

    fn local(v: serde_json::Value) -> Result<(), String> {
        let m: BTreeMap<String, LocalJwtConfig> =
            serde_json::from_value(json!({ "p": v })).map_err(|e| e.to_string())?;
        validate_local_jwt(&m, "$.local_jwt")
    }

    #[test]
    fn local_jwt_values() {
        assert!(local(
            json!({"issuer":"i","client_id":"","algorithms":["RS256"],"pem":[RSA_PUBLIC_SPKI]})
        )
        .is_ok());
        assert!(local(json!({"issuer":"i","client_id":"a","algorithms":["HS256","HS512"],"hmac_secret":"s3cret"})).is_ok());
        assert!(local(json!({"issuer":"i","client_id":"a","algorithms":["HS256"],"hmac_secret_base64":"c2VjcmV0"})).is_ok());
        assert!(local(json!({"issuer":"i","client_id":"a","algorithms":["ES256"],"jwks_uri":"http://127.0.0.1:1/jwks"})).is_ok());
        // CouchDB mode: issuer and client_id are optional for local_jwt
        assert!(local(json!({"algorithms":["ES512"],"pem":[EC521_PUBLIC],"roles_claim":"_couchdb.roles","required_claims":["exp","_couchdb.roles"],"register":true})).is_ok());
        assert!(
            local(json!({"issuer":"i","algorithms":["RS256"],"pem":[RSA_PUBLIC_SPKI]})).is_ok()
        );
        assert!(local(json!({"client_id":"a","algorithms":["HS256"],"hmac_secret":"s"})).is_ok());
        for (cfg, needle) in [
            (
                json!({"issuer":"","client_id":"a","algorithms":["RS256"],"pem":[RSA_PUBLIC_SPKI]}),
                "$.local_jwt.p.issuer: empty",
            ),
            (
                json!({"algorithms":["ES256"],"pem":[RSA_PUBLIC_SPKI]}),
                "$.local_jwt.p.algorithms: ES256 is listed but no configured key",
            ),
            (json!({"algorithms":["ES512"]}), "$.local_jwt.p.no keys"),
            (
                json!({"issuer":"i","client_id":"a","algorithms":["RS257"],"pem":[RSA_PUBLIC_SPKI]}),
                "$.local_jwt.p.algorithms[0]: unknown algorithm \"RS257\"",
            ),
            (
                json!({"issuer":"i","client_id":"a","algorithms":["none"],"pem":[RSA_PUBLIC_SPKI]}),
                "never accepted",
            ),
            (
                json!({"issuer":"i","client_id":"a","algorithms":[],"pem":[RSA_PUBLIC_SPKI]}),
                "at least one algorithm",
            ),
            (
                json!({"issuer":"i","client_id":"a","algorithms":["RS256"]}),
                "no keys",
            ),
            (
                json!({"issuer":"i","client_id":"a","algorithms":["RS256"],"pem":["garbage"]}),
                "$.local_jwt.p.pem[0]: not a PEM",
            ),
            (
                json!({"issuer":"i","client_id":"a","algorithms":["RS256"],"pem":[RSA_PRIVATE]}),
                "private key",
            ),
            (
                json!({"issuer":"i","client_id":"a","algorithms":["ES256"],"pem":[RSA_PUBLIC_SPKI]}),
                "ES256 is listed but no configured key is a EC P-256 key",
            ),
            (
                json!({"issuer":"i","client_id":"a","algorithms":["RS256"],"pem":[RSA_PUBLIC_SPKI, EC256_PUBLIC]}),
                "fits none",
            ),
            (
                json!({"issuer":"i","client_id":"a","algorithms":["RS256"],"keys":[{"kty":"RSA","n":"AQAB"}]}),
                "$.local_jwt.p.keys[0]: JWK member \"e\"",
            ),
            (
                json!({"issuer":"i","client_id":"a","algorithms":["HS256"],"hmac_secret":""}),
                "hmac_secret: the HMAC secret is empty",
            ),
            (
                json!({"issuer":"i","client_id":"a","algorithms":["HS256"],"hmac_secret_base64":"!!"}),
                "not valid base64",
            ),
            (
                json!({"issuer":"i","client_id":"a","algorithms":["RS256"],"jwks_uri":"ftp://x/y"}),
                "http(s)",
            ),
            (
                json!({"issuer":"i","client_id":"a","algorithms":["RS256"],"jwks_uri":"http://x/y","pem":[RSA_PUBLIC_SPKI]}),
                "not both",
            ),
            (
                json!({"issuer":"i","client_id":"a","algorithms":["RS256"],"pem":[RSA_PUBLIC_SPKI],"leeway":5}),
                "unknown field `leeway`",
            ),
            (
                json!({"issuer":"i","client_id":"a","algorithms":["RS256"],"pem":[RSA_PUBLIC_SPKI],"user_prefix":"a/b"}),
                "user_prefix",
            ),
        ] {
            let e = local(cfg.clone()).unwrap_err();
            assert!(e.contains(needle), "{cfg}: {e}");
        }
    }

    #[test]
    fn oidc_values() {
        let ok: OidcConfig = serde_json::from_value(json!({"providers":{"google":{"issuer":"https://accounts.google.com","client_id":"c","register":true}}})).unwrap();
        assert!(ok.validate("$.oidc").is_ok());
        for (cfg, needle) in [
            (json!({"providers":{}}), "no provider"),
            (
                json!({"default_provider":"x","providers":{"a":{"issuer":"https://a","client_id":"c"}}}),
                "default_provider: \"x\"",
            ),
            (
                json!({"providers":{"my_idp":{"issuer":"https://a","client_id":"c"}}}),
                "may not contain \"_\"",
            ),
            (
                json!({"providers":{"a":{"issuer":"","client_id":"c"}}}),
                "$.oidc.providers.a.issuer: missing",
            ),
            (
                json!({"providers":{"a":{"issuer":"https://a","client_id":""}}}),
                "$.oidc.providers.a.client_id: missing",
            ),
            (
                json!({"providers":{"a":{"issuer":"test_issuer","client_id":"c"}}}),
                "set discovery_url",
            ),
            (
                json!({"providers":{"a":{"issuer":"https://a","client_id":"c","discovery_url":"nope"}}}),
                "discovery_url",
            ),
            (
                json!({"providers":{"a":{"issuer":"https://a","client_id":"c","roles_claim":"a..b"}}}),
                "roles_claim",
            ),
            (
                json!({"providers":{"a":{"issuer":"https://a","client_id":"c","callback_url":"/db/_oidc_callback"}}}),
                "$.oidc.providers.a.callback_url: \"/db/_oidc_callback\" is not a valid URL",
            ),
            (
                json!({"providers":{"a":{"issuer":"https://a","client_id":"c","callback_url":"https://h/db/_oidc"}}}),
                "_oidc_callback URL",
            ),
            (
                json!({"providers":{"a":{"issuer":"https://a","client_id":"c","validation_key":""}}}),
                "validation_key: empty",
            ),
            (
                json!({"providers":{"a":{"issuer":"https://a","client_id":"c","scope":["openid profile"]}}}),
                "scope[0]",
            ),
            (
                json!({"providers":{"a":{"issuer":"https://a","client_id":"c","allow_unsigned_provider_tokens":true}}}),
                "set callback_url",
            ),
            (
                json!({"return_to_origins":["https://app.example/path"],"providers":{"a":{"issuer":"https://a","client_id":"c"}}}),
                "return_to_origins[0]",
            ),
        ] {
            let c: OidcConfig = serde_json::from_value(cfg.clone()).unwrap();
            let e = c.validate("$.oidc").unwrap_err();
            assert!(e.contains(needle), "{cfg}: {e}");
        }
        assert!(serde_json::from_value::<OidcConfig>(
            json!({"providers":{"a":{"issuer":"x","client_id":"c","validation_secret":"k"}}})
        )
        .is_err());
        // OpenID Connect still needs its issuer (discovery and the iss check depend on it)
        let e = serde_json::from_value::<OidcConfig>(json!({"providers":{"a":{"client_id":"c"}}}))
            .unwrap_err();
        assert!(e.to_string().contains("missing field `issuer`"), "{e}");
    }

    #[test]
    fn code_flow_keys() {
        let c: OidcConfig = serde_json::from_value(json!({
            "return_to_origins": ["https://app.example", "http://localhost:8080"],
            "providers": {"kc": {"issuer": "https://kc.example/realms/r", "client_id": "c",
                "validation_key": "s3cret", "callback_url": "https://sg.example/db/_oidc_callback",
                "scope": ["profile", "openid", "offline_access"], "include_access": true,
                "allow_unsigned_provider_tokens": true}}}))
        .unwrap();
        c.validate("$.oidc").unwrap();
        let p = &c.providers["kc"];
        assert_eq!(p.scopes(), ["openid", "profile", "offline_access"]);
        assert!(!format!("{p:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&c).unwrap().contains("s3cret"));
        let d: OidcProviderConfig =
            serde_json::from_value(json!({"issuer": "https://a", "client_id": "c"})).unwrap();
        assert_eq!(d.scopes(), ["openid", "email"]);
    }

    #[test]
    fn secrets_never_print_or_serialize() {
        let c: LocalJwtConfig = serde_json::from_value(
            json!({"issuer":"i","client_id":"a","algorithms":["HS256"],"hmac_secret":"hunter2"}),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&c).unwrap().contains("hunter2"));
    }
}
