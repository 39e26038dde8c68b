//! End-to-end checks of [`JwtAuth`]: provider selection, every rejection, the token cache,
//! JWKS rotation and OpenID discovery against a loopback server.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::keys::tests::*;
use super::keys::Alg;
use super::remote::tests::{jwks_with, TestServer};
use super::*;

const NOW: i64 = 1_700_000_000;
const SECRET: &str = "a shared secret of at least 32 bytes!";

fn local(v: Value) -> BTreeMap<String, LocalJwtConfig> {
    let m: BTreeMap<String, LocalJwtConfig> = serde_json::from_value(v).unwrap();
    config::validate_local_jwt(&m, "$.local_jwt").unwrap();
    m
}

fn auth_local(v: Value) -> JwtAuth {
    JwtAuth::new(None, Some(&local(v))).unwrap().unwrap()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss":"https://issuer.example","aud":"app","sub":"bilbo",
        "exp": NOW + 600, "iat": NOW - 10});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn all_keys_provider() -> JwtAuth {
    auth_local(json!({"app": {
        "issuer": "https://issuer.example", "client_id": "app",
        "algorithms": Alg::ALL.map(Alg::name),
        "pem": [RSA_PUBLIC_SPKI, EC256_PUBLIC, EC384_PUBLIC, EC521_PUBLIC, ED_PUBLIC],
        "hmac_secret": SECRET,
        "user_prefix": "app", "roles_claim": "_couchdb.roles", "channels_claim": "channels",
        "required_claims": ["email"],
    }}))
}

#[tokio::test]
async fn local_jwt_every_algorithm() {
    let a = all_keys_provider();
    for alg in Alg::ALL {
        let t = sign(
            alg,
            None,
            &claims(
                json!({"email":"b@shire.example","_couchdb":{"roles":["hobbit"]},"channels":"ring"}),
            ),
            SECRET.as_bytes(),
        );
        let id = a
            .verify_at(&t, NOW)
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(id.username, "app_bilbo");
        assert_eq!(id.roles, ["hobbit".to_string()].into());
        assert_eq!(id.channels, ["ring".to_string()].into());
        assert_eq!(id.email.as_deref(), Some("b@shire.example"));
        assert_eq!(id.issuer, "https://issuer.example");
        assert_eq!(id.expires_at, Some(NOW + 600 + 60));
    }
}

#[tokio::test]
async fn every_rejection_names_its_check() {
    let a = all_keys_provider();
    let ok = claims(json!({"email":"e"}));
    let s = SECRET.as_bytes();
    let other_sig = {
        // a valid RS256 token signed by another key
        let t = sign(Alg::RS256, None, &ok, s);
        let (input, _) = t.rsplit_once('.').unwrap();
        let foreign = sign(Alg::RS256, None, &json!({"x":1}), s);
        format!("{input}.{}", foreign.rsplit_once('.').unwrap().1)
    };
    let none = {
        let t = sign_raw(&json!({"alg":"none"}), &ok, Alg::HS256, s);
        format!("{}.", t.rsplit_once('.').unwrap().0)
    };
    let cases: Vec<(String, JwtError)> = vec![
        (
            "garbage".into(),
            JwtError::Malformed("not a compact JWS (header.payload.signature)".into()),
        ),
        (none, JwtError::AlgNone),
        (other_sig, JwtError::BadSignature),
        (
            sign(Alg::HS256, None, &ok, b"wrong secret"),
            JwtError::BadSignature,
        ),
        (
            sign(
                Alg::RS256,
                None,
                &claims(json!({"email":"e","iss":null})),
                s,
            ),
            JwtError::MissingIss,
        ),
        (
            sign(
                Alg::RS256,
                None,
                &claims(json!({"email":"e","iss":"https://evil.example"})),
                s,
            ),
            JwtError::UnknownIssuer,
        ),
        (
            sign(
                Alg::RS256,
                None,
                &claims(json!({"email":"e","aud":["other"]})),
                s,
            ),
            JwtError::WrongAudience,
        ),
        (
            sign(
                Alg::RS256,
                None,
                &claims(json!({"email":"e","exp":NOW - 61})),
                s,
            ),
            JwtError::Expired,
        ),
        (
            sign(
                Alg::RS256,
                None,
                &claims(json!({"email":"e","exp":null})),
                s,
            ),
            JwtError::MissingExp,
        ),
        (
            sign(
                Alg::RS256,
                None,
                &claims(json!({"email":"e","nbf":NOW + 600})),
                s,
            ),
            JwtError::NotYetValid,
        ),
        (
            sign(
                Alg::RS256,
                None,
                &claims(json!({"email":"e","iat":NOW + 600})),
                s,
            ),
            JwtError::IssuedInFuture,
        ),
        (
            sign(Alg::RS256, None, &claims(json!({"email":"e","sub":""})), s),
            JwtError::MissingSub,
        ),
        (
            sign(Alg::RS256, None, &claims(json!({})), s),
            JwtError::MissingClaim("email".into()),
        ),
        (
            sign(
                Alg::RS256,
                None,
                &claims(json!({"email":"e","_couchdb":{"roles":[1]}})),
                s,
            ),
            JwtError::BadClaim("roles claim", "must be a string or an array of strings"),
        ),
    ];
    for (t, want) in cases {
        let got = a.verify_at(&t, NOW).await.unwrap_err();
        assert_eq!(got, want);
        assert!(!got.to_string().contains(&t), "reason leaks the token");
    }
}

#[tokio::test]
async fn algorithm_allow_list_and_key_type() {
    // RS256 only, but the token is PS256 with the same RSA key
    let a = auth_local(
        json!({"p": {"issuer": "https://issuer.example", "client_id": "app",
        "algorithms": ["RS256"], "pem": [RSA_PUBLIC_PKCS1]}}),
    );
    let t = sign(Alg::PS256, None, &claims(json!({})), b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::AlgNotAllowed("PS256".into())
    );
    // key confusion: HS256 "signed" with the RSA public key text as the secret
    let t = sign(
        Alg::HS256,
        None,
        &claims(json!({})),
        RSA_PUBLIC_PKCS1.as_bytes(),
    );
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::AlgNotAllowed("HS256".into())
    );
    // allowed alg but no key of that type
    let a = auth_local(
        json!({"p": {"issuer": "https://issuer.example", "client_id": "app",
        "algorithms": ["ES256", "RS256"], "pem": [RSA_PUBLIC_SPKI, EC256_PUBLIC]}}),
    );
    let t = sign(Alg::ES256, None, &claims(json!({})), b"");
    assert!(a.verify_at(&t, NOW).await.is_ok());
    // JWK kid selects the key
    let a = auth_local(
        json!({"p": {"issuer": "https://issuer.example", "client_id": "",
        "algorithms": ["RS256"],
        "keys": serde_json::from_str::<Value>(&jwks_with(&[RSA_PUBLIC_SPKI, RSA2_PUBLIC], &["k1", "k2"])).unwrap()["keys"]}}),
    );
    let t = sign(
        Alg::RS256,
        Some("k1"),
        &claims(json!({"aud":"anything"})),
        b"",
    );
    assert!(
        a.verify_at(&t, NOW).await.is_ok(),
        "client_id \"\" skips the audience check"
    );
    let t = sign(Alg::RS256, Some("k2"), &claims(json!({})), b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::BadSignature
    );
    let t = sign(Alg::RS256, Some("k9"), &claims(json!({})), b"");
    assert_eq!(a.verify_at(&t, NOW).await.unwrap_err(), JwtError::NoKey);
}

#[tokio::test]
async fn provider_selection_by_issuer_and_audience() {
    let a = auth_local(json!({
        "one": {"issuer": "https://one.example", "client_id": "a1", "algorithms": ["HS256"], "hmac_secret": "s1"},
        "two": {"issuer": "https://two.example", "client_id": "a2", "algorithms": ["HS256"], "hmac_secret": "s2"},
    }));
    let t = sign(
        Alg::HS256,
        None,
        &claims(json!({"iss":"https://two.example","aud":["x","a2"]})),
        b"s2",
    );
    let id = a.verify_at(&t, NOW).await.unwrap();
    assert_eq!(id.provider, "two");
    assert_eq!(id.username, "two.example_bilbo");
    let t = sign(
        Alg::HS256,
        None,
        &claims(json!({"iss":"https://two.example","aud":"a1"})),
        b"s2",
    );
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::WrongAudience
    );
    assert!(a.has_issuer("https://one.example") && !a.has_issuer("https://x"));
}

#[tokio::test]
async fn verified_tokens_are_cached_until_exp() {
    let a = all_keys_provider();
    let t = sign(Alg::ES512, None, &claims(json!({"email":"e"})), b"");
    a.verify_at(&t, NOW).await.unwrap();
    assert_eq!(a.cached_tokens(), 1);
    // cached: still accepted (the cache answers, same identity)
    let id = a.verify_at(&t, NOW + 30).await.unwrap();
    assert_eq!(id.username, "app_bilbo");
    assert_eq!(a.cached_tokens(), 1);
    // past exp + leeway the entry is dead and the token is refused
    assert_eq!(
        a.verify_at(&t, NOW + 661).await.unwrap_err(),
        JwtError::Expired
    );
    // rejected tokens are not cached
    let bad = sign(Alg::ES512, None, &claims(json!({})), b"");
    assert!(a.verify_at(&bad, NOW).await.is_err());
    assert!(a.cached_tokens() <= 1);
}

#[tokio::test]
async fn jwks_uri_rotation_refetches_and_drops_cached_tokens() {
    let srv = TestServer::start(&jwks_with(&[RSA_PUBLIC_SPKI], &["k1"])).await;
    let a = auth_local(
        json!({"p": {"issuer": "https://issuer.example", "client_id": "app",
        "algorithms": ["RS256"], "jwks_uri": format!("{}/jwks", srv.url)}}),
    );
    let t1 = sign(Alg::RS256, Some("k1"), &claims(json!({})), b"");
    a.verify_at(&t1, NOW).await.unwrap();
    a.verify_at(&t1, NOW).await.unwrap();
    assert_eq!(srv.hits(), 1);
    // the provider rotates to a key named k2; k1 is withdrawn
    srv.set(&jwks_with(&[RSA_PUBLIC_SPKI], &["k2"]));
    let t2 = sign(Alg::RS256, Some("k2"), &claims(json!({"sub":"frodo"})), b"");
    // within 10 s of the last fetch: no refetch, the kid is unknown
    assert_eq!(a.verify_at(&t2, NOW).await.unwrap_err(), JwtError::NoKey);
    assert_eq!(srv.hits(), 1);
    // once the interval has passed, the unknown kid triggers one refetch and k2 verifies
    tokio::time::sleep(remote::JWKS_MIN_REFETCH + Duration::from_millis(100)).await;
    assert_eq!(
        a.verify_at(&t2, NOW).await.unwrap().username,
        "issuer.example_frodo"
    );
    assert_eq!(srv.hits(), 2);
    // the keys changed: the cache no longer vouches for the k1 token, and no refetch
    // happens for it (rate limit)
    assert_eq!(a.verify_at(&t1, NOW).await.unwrap_err(), JwtError::NoKey);
    assert_eq!(srv.hits(), 2);
}

#[tokio::test]
async fn oidc_discovery_and_hmac_refusal() {
    let srv = TestServer::start("{}").await;
    let issuer = srv.url.clone();
    let jwks = jwks_with(&[RSA_PUBLIC_SPKI], &["k1"]);
    // one server answers both documents: the JWKS members ride along in the discovery body
    let mut doc: Value = serde_json::from_str(&jwks).unwrap();
    doc["issuer"] = json!(issuer);
    doc["jwks_uri"] = json!(format!("{issuer}/jwks"));
    doc["id_token_signing_alg_values_supported"] = json!(["RS256", "HS256"]);
    srv.set(&doc.to_string());
    let oidc: OidcConfig = serde_json::from_value(json!({"providers": {"idp": {
        "issuer": issuer, "client_id": "app", "register": true,
        "roles_claim": "realm_access.roles"}}}))
    .unwrap();
    oidc.validate("$.oidc").unwrap();
    let a = JwtAuth::new(Some(&oidc), None).unwrap().unwrap();
    let c = claims(json!({"iss": issuer, "realm_access": {"roles": ["admin"]}}));
    let t = sign(Alg::RS256, Some("k1"), &c, b"");
    let id = a.verify_at(&t, NOW).await.unwrap();
    let host = issuer.trim_start_matches("http://").replace(':', "%3A");
    assert_eq!(id.username, format!("{host}_bilbo"));
    assert!(id.register);
    assert_eq!(id.roles, ["admin".to_string()].into());
    assert_eq!(srv.hits(), 2, "discovery + JWKS");
    // HS256 is never accepted for OpenID Connect, even when advertised
    let t = sign(Alg::HS256, None, &c, b"app-secret");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::AlgNotAllowed("HS256".into())
    );
    // ES256 is not advertised
    let t = sign(Alg::ES256, None, &c, b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::AlgNotAllowed("ES256".into())
    );
    // a single OpenID provider takes every token, then checks iss itself
    let t = sign(
        Alg::RS256,
        Some("k1"),
        &claims(json!({"iss":"https://evil.example"})),
        b"",
    );
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::UnknownIssuer
    );
}

#[tokio::test]
async fn oidc_provider_down_is_a_401_not_a_hang() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let oidc: OidcConfig = serde_json::from_value(json!({"providers": {"idp": {
        "issuer": format!("http://{addr}"), "client_id": "app"}}}))
    .unwrap();
    let a = JwtAuth::new(Some(&oidc), None).unwrap().unwrap();
    let c = claims(json!({"iss": format!("http://{addr}")}));
    let t = sign(Alg::RS256, Some("k1"), &c, b"");
    let started = std::time::Instant::now();
    let e = a.verify_at(&t, NOW).await.unwrap_err();
    assert!(matches!(e, JwtError::ProviderUnavailable(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

// --- CouchDB mode: local_jwt without issuer (Self-hosted LiveSync's tokens) ---------------

/// A token as Self-hosted LiveSync signs it: header `{alg, typ, kid?}`, payload
/// `{exp, iat, sub, "_couchdb.roles": ["_admin"]}` — no `iss`, no `aud`.
fn livesync_claims(sub: &str) -> Value {
    json!({"exp": NOW + 300, "iat": NOW, "sub": sub, "_couchdb.roles": ["_admin"]})
}

fn couchdb_mode() -> JwtAuth {
    auth_local(json!({"livesync": {
        "algorithms": ["ES256", "ES512"], "pem": [EC256_PUBLIC, EC521_PUBLIC],
        "roles_claim": "_couchdb.roles", "register": true,
    }}))
}

#[tokio::test]
async fn issuerless_provider_accepts_livesync_tokens() {
    let a = couchdb_mode();
    for alg in [Alg::ES256, Alg::ES512] {
        // with and without a kid (LiveSync sends the "JWT Key ID" setting when it is set;
        // PEM keys have none, so any kid falls back to the keys of the alg's type)
        for kid in [None, Some("my-key-id")] {
            let t = sign(alg, kid, &livesync_claims("vaultuser"), b"");
            let id = a
                .verify_at(&t, NOW)
                .await
                .unwrap_or_else(|e| panic!("{alg} {kid:?}: {e}"));
            assert_eq!(id.username, "vaultuser", "sub verbatim, no issuer prefix");
            assert_eq!(id.roles, ["_admin".to_string()].into());
            assert_eq!(id.provider, "livesync");
            assert_eq!(id.issuer, "local_jwt:livesync");
            assert_eq!(id.expires_at, Some(NOW + 300 + 60));
            assert!(id.register);
        }
    }
    assert!(a.has_issuer("local_jwt:livesync"));
    assert!(!a.has_issuer("local_jwt:other"));
    // the user name is the sub exactly as sent (no escaping): CouchDB's user is that name
    let t = sign(Alg::ES256, None, &livesync_claims("Vault User|1 é"), b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap().username,
        "Vault User|1 é"
    );
    // an iss that no provider has is not checked by an issuer-less provider (CouchDB)
    let mut c = livesync_claims("u2");
    c["iss"] = json!("https://whoever.example");
    c["aud"] = json!("anything");
    let t = sign(Alg::ES512, None, &c, b"");
    assert_eq!(a.verify_at(&t, NOW).await.unwrap().username, "u2");
    // the usual claim checks still apply
    let mut c = livesync_claims("u3");
    c["exp"] = json!(NOW - 61);
    assert_eq!(
        a.verify_at(&sign(Alg::ES256, None, &c, b""), NOW)
            .await
            .unwrap_err(),
        JwtError::Expired
    );
    let mut c = livesync_claims("u3");
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        a.verify_at(&sign(Alg::ES256, None, &c, b""), NOW)
            .await
            .unwrap_err(),
        JwtError::MissingSub
    );
}

#[tokio::test]
async fn issuerless_user_prefix_and_username_claim() {
    let a = auth_local(json!({"p": {"algorithms": ["ES256"], "pem": [EC256_PUBLIC],
        "user_prefix": "lv"}}));
    let t = sign(Alg::ES256, None, &livesync_claims("a b|c"), b"");
    assert_eq!(a.verify_at(&t, NOW).await.unwrap().username, "lv_a+b%7Cc");
    let a = auth_local(json!({"p": {"algorithms": ["ES256"], "pem": [EC256_PUBLIC],
        "username_claim": "name"}}));
    let mut c = livesync_claims("s");
    c["name"] = json!("Ann Lee");
    let t = sign(Alg::ES256, None, &c, b"");
    assert_eq!(a.verify_at(&t, NOW).await.unwrap().username, "Ann Lee");
}

#[tokio::test]
async fn issuerless_required_claims_and_literal_dotted_names() {
    let a = auth_local(json!({"p": {"algorithms": ["ES256"], "pem": [EC256_PUBLIC],
        "roles_claim": "_couchdb.roles", "required_claims": ["exp", "_couchdb.roles"]}}));
    // LiveSync's literal "_couchdb.roles" key satisfies the requirement and gives the roles
    let t = sign(Alg::ES256, None, &livesync_claims("u"), b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap().roles,
        ["_admin".to_string()].into()
    );
    // so does the nested form (a dotted path)
    let c = json!({"exp": NOW + 300, "sub": "u", "_couchdb": {"roles": ["nested"]}});
    let t = sign(Alg::ES256, None, &c, b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap().roles,
        ["nested".to_string()].into()
    );
    // both present: the literal top-level key wins
    let mut c = livesync_claims("u");
    c["_couchdb"] = json!({"roles": ["nested"]});
    let t = sign(Alg::ES256, None, &c, b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap().roles,
        ["_admin".to_string()].into()
    );
    // missing: refused, naming the claim
    let t = sign(
        Alg::ES256,
        None,
        &json!({"exp": NOW + 300, "sub": "u"}),
        b"",
    );
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::MissingClaim("_couchdb.roles".into())
    );
    let t = sign(
        Alg::ES256,
        None,
        &json!({"exp": NOW + 300, "sub": "u", "_couchdb.roles": null}),
        b"",
    );
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::MissingClaim("_couchdb.roles".into())
    );
}

#[tokio::test]
async fn issuerless_rejects_wrong_keys_and_algorithms() {
    let a = auth_local(json!({"p": {"algorithms": ["ES512"], "pem": [EC521_PUBLIC]}}));
    // alg not in the provider's algorithms (even though it is a valid signature)
    let t = sign(Alg::ES256, None, &livesync_claims("u"), b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::AlgNotAllowed("ES256".into())
    );
    // signed by another key of the right type
    let a = auth_local(json!({"p": {"algorithms": ["RS256"], "pem": [RSA2_PUBLIC]}}));
    let t = sign(Alg::RS256, None, &livesync_claims("u"), b"");
    let e = a.verify_at(&t, NOW).await.unwrap_err();
    assert_eq!(e, JwtError::BadSignature);
    assert!(!e.to_string().contains(&t));
    // HMAC with the wrong secret; base64 secrets as LiveSync's HS256 key setting
    let a = auth_local(json!({"p": {"algorithms": ["HS256", "HS512"],
        "hmac_secret_base64": "c2VjcmV0LW9mLXRoZS1zZXJ2ZXI="}}));
    let t = sign(
        Alg::HS256,
        None,
        &livesync_claims("u"),
        b"secret-of-the-server",
    );
    assert_eq!(a.verify_at(&t, NOW).await.unwrap().username, "u");
    let t = sign(Alg::HS512, None, &livesync_claims("u"), b"another secret");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::BadSignature
    );
    // unsigned and tampered tokens
    let none = {
        let t = sign_raw(
            &json!({"alg": "none", "typ": "JWT"}),
            &livesync_claims("u"),
            Alg::HS256,
            b"x",
        );
        format!("{}.", t.rsplit_once('.').unwrap().0)
    };
    assert_eq!(
        a.verify_at(&none, NOW).await.unwrap_err(),
        JwtError::AlgNone
    );
    // the audience is checked when client_id is set, even without an issuer
    let a = auth_local(
        json!({"p": {"client_id": "obsidian", "algorithms": ["ES256"],
        "pem": [EC256_PUBLIC]}}),
    );
    let t = sign(Alg::ES256, None, &livesync_claims("u"), b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::WrongAudience
    );
    let mut c = livesync_claims("u");
    c["aud"] = json!(["obsidian"]);
    assert!(a
        .verify_at(&sign(Alg::ES256, None, &c, b""), NOW)
        .await
        .is_ok());
}

#[tokio::test]
async fn kid_fallback_only_in_couchdb_mode() {
    let keys = serde_json::from_str::<Value>(&jwks_with(&[RSA_PUBLIC_SPKI], &["k1"])).unwrap()
        ["keys"]
        .clone();
    // issuer-less: a kid that names no key falls back to every RSA key
    let a = auth_local(json!({"p": {"algorithms": ["RS256"], "keys": keys}}));
    for kid in [Some("k1"), Some("unknown"), None] {
        let t = sign(Alg::RS256, kid, &livesync_claims("u"), b"");
        assert!(a.verify_at(&t, NOW).await.is_ok(), "{kid:?}");
    }
    // …but still needs a key that verifies
    let keys2 =
        serde_json::from_str::<Value>(&jwks_with(&[RSA2_PUBLIC], &["k1"])).unwrap()["keys"].clone();
    let a = auth_local(json!({"p": {"algorithms": ["RS256"], "keys": keys2}}));
    let t = sign(Alg::RS256, Some("unknown"), &livesync_claims("u"), b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::BadSignature
    );
    // with an issuer (SG behaviour) an unknown kid stays unknown
    let a = auth_local(
        json!({"p": {"issuer": "https://issuer.example", "client_id": "app",
        "algorithms": ["RS256"], "keys": keys}}),
    );
    let t = sign(Alg::RS256, Some("unknown"), &claims(json!({})), b"");
    assert_eq!(a.verify_at(&t, NOW).await.unwrap_err(), JwtError::NoKey);
    let t = sign(Alg::RS256, Some("k1"), &claims(json!({})), b"");
    assert!(a.verify_at(&t, NOW).await.is_ok());
}

#[tokio::test]
async fn several_issuerless_providers_match_by_key_kid_first() {
    let jwk = |pem: &str, kid: &str| {
        serde_json::from_str::<Value>(&jwks_with(&[pem], &[kid])).unwrap()["keys"][0].clone()
    };
    // "a" holds RSA2 under kid "shared", "b" the signing key under kid "b1", "c" an EC key
    // and a prefix; BTreeMap order tries a, b, c
    let a = auth_local(json!({
        "a": {"algorithms": ["RS256"], "keys": [jwk(RSA2_PUBLIC, "shared")], "user_prefix": "a"},
        "b": {"algorithms": ["RS256"], "keys": [jwk(RSA_PUBLIC_SPKI, "b1")], "user_prefix": "b"},
        "c": {"algorithms": ["ES256"], "pem": [EC256_PUBLIC], "user_prefix": "c"},
    }));
    // the kid names b's key: b, directly
    let t = sign(Alg::RS256, Some("b1"), &livesync_claims("u"), b"");
    assert_eq!(a.verify_at(&t, NOW).await.unwrap().username, "b_u");
    // no kid: a's key fails, b's verifies
    let t = sign(Alg::RS256, None, &livesync_claims("u"), b"");
    assert_eq!(a.verify_at(&t, NOW).await.unwrap().provider, "b");
    // a kid naming a's key, but signed with b's: a fails, then b (fallback) verifies
    let t = sign(Alg::RS256, Some("shared"), &livesync_claims("u"), b"");
    assert_eq!(a.verify_at(&t, NOW).await.unwrap().provider, "b");
    // EC: only c takes ES256
    let t = sign(Alg::ES256, Some("x"), &livesync_claims("u"), b"");
    assert_eq!(a.verify_at(&t, NOW).await.unwrap().username, "c_u");
    // no provider's key verifies: the closest refusal (a bad signature beats a refused alg)
    let t = sign(Alg::ES384, None, &livesync_claims("u"), b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::AlgNotAllowed("ES384".into())
    );
    let other = {
        let t = sign(Alg::RS256, None, &livesync_claims("u"), b"");
        let (input, _) = t.rsplit_once('.').unwrap();
        let foreign = sign(Alg::RS256, None, &json!({"x": 1}), b"");
        format!("{input}.{}", foreign.rsplit_once('.').unwrap().1)
    };
    assert_eq!(
        a.verify_at(&other, NOW).await.unwrap_err(),
        JwtError::BadSignature
    );
    // once verified, that provider's claim checks decide (no trying the next one)
    let mut c = livesync_claims("u");
    c["exp"] = json!(NOW - 3600);
    let t = sign(Alg::RS256, Some("b1"), &c, b"");
    assert_eq!(a.verify_at(&t, NOW).await.unwrap_err(), JwtError::Expired);
}

#[tokio::test]
async fn issuer_set_providers_keep_their_checks_next_to_couchdb_mode() {
    let a = auth_local(json!({
        "sg": {"issuer": "https://issuer.example", "client_id": "app",
            "algorithms": ["RS256"], "pem": [RSA_PUBLIC_SPKI]},
        "couch": {"algorithms": ["ES256", "RS256"], "pem": [EC256_PUBLIC, RSA2_PUBLIC]},
    }));
    // the issuer-set provider: its iss and aud, SG's user name
    let t = sign(Alg::RS256, None, &claims(json!({})), b"");
    let id = a.verify_at(&t, NOW).await.unwrap();
    assert_eq!(id.provider, "sg");
    assert_eq!(id.username, "issuer.example_bilbo");
    // its iss with a wrong aud is refused, not handed to the issuer-less provider
    let t = sign(Alg::RS256, None, &claims(json!({"aud": "other"})), b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::WrongAudience
    );
    // its iss but no aud at all
    let t = sign(Alg::ES256, None, &claims(json!({"aud": null})), b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::WrongAudience
    );
    // signed by the sg key but without iss: the issuer-less provider's keys do not verify it
    let t = sign(Alg::RS256, None, &livesync_claims("u"), b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::BadSignature
    );
    // a LiveSync token for the issuer-less provider
    let t = sign(Alg::ES256, None, &livesync_claims("u"), b"");
    let id = a.verify_at(&t, NOW).await.unwrap();
    assert_eq!((id.provider.as_str(), id.username.as_str()), ("couch", "u"));
    // without issuer-less providers, a token without iss is still refused as before
    let a = auth_local(
        json!({"sg": {"issuer": "https://issuer.example", "client_id": "app",
        "algorithms": ["ES256"], "pem": [EC256_PUBLIC]}}),
    );
    let t = sign(Alg::ES256, None, &livesync_claims("u"), b"");
    assert_eq!(
        a.verify_at(&t, NOW).await.unwrap_err(),
        JwtError::MissingIss
    );
}

#[tokio::test]
async fn couchdb_mode_user_gets_the_admin_role_channels() {
    use crate::{AuthSettings, Authenticator, CookieSettings, Credentials, HashParams, SameSite};
    let dir = tempfile::tempdir().unwrap();
    let store = syncgate_storage::Store::open(dir.path()).unwrap();
    let db: std::sync::Arc<dyn syncgate_storage::DatabaseStore> = store.database("db").unwrap();
    let auth = Authenticator::new(
        db,
        AuthSettings {
            disable_password_auth: false,
            hash_params: HashParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            cookie: CookieSettings {
                name: "SyncGatewaySession".into(),
                path: "/db".into(),
                secure: false,
                http_only: true,
                same_site: SameSite::Lax,
            },
            session_ttl: Duration::from_secs(3600),
            session_key: b"key".to_vec(),
        },
    );
    // the operator's role named like CouchDB's server-admin role
    auth.put_role(
        Some("_admin"),
        json!({"admin_channels": ["*"]}),
        crate::WriteMode::Upsert,
    )
    .await
    .unwrap();
    auth.set_bearer(std::sync::Arc::new(couchdb_mode()));
    // a real-time token (the Authenticator verifies at the wall clock)
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let c =
        json!({"exp": now + 300, "iat": now, "sub": "vault-owner", "_couchdb.roles": ["_admin"]});
    let header = format!("Bearer {}", sign(Alg::ES512, None, &c, b""));
    let creds = Credentials {
        authorization: Some(&header),
        ..Default::default()
    };
    let who = auth.authenticate(&creds).await.unwrap();
    assert_eq!(who.user.name.as_deref(), Some("vault-owner"));
    assert!(who.user.roles.contains("_admin"));
    assert!(
        who.user.channels.contains_key("*"),
        "{:?}",
        who.user.channels
    );
    // registered as the sub, verbatim, with the role as a JWT role
    let u = auth
        .principals()
        .get_user("vault-owner")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.jwt_issuer.as_deref(), Some("local_jwt:livesync"));
    assert!(u.jwt_roles.contains_key("_admin"));
    // an admin can create such a user too (SG needs a password on create; the token user
    // never sends it)
    auth.put_user(
        Some("Vault User|2"),
        json!({"password": "never-used-by-the-plugin", "admin_roles": ["_admin"]}),
        crate::WriteMode::Create,
    )
    .await
    .unwrap();
    assert!(auth
        .principals()
        .get_role("_admin")
        .await
        .unwrap()
        .is_some());
    let c2 = json!({"exp": now + 300, "sub": "Vault User|2"});
    let header = format!("Bearer {}", sign(Alg::ES256, Some("kid-1"), &c2, b""));
    let who = auth
        .authenticate(&Credentials {
            authorization: Some(&header),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(who.user.name.as_deref(), Some("Vault User|2"));
    assert!(
        who.user.channels.contains_key("*"),
        "through its admin role"
    );
    // a token signed by another key is refused with a 401 naming the check
    let forged = sign(Alg::RS256, None, &c, b"");
    let header = format!("Bearer {forged}");
    let e = auth
        .authenticate(&Credentials {
            authorization: Some(&header),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("RS256"), "{e}");
}
