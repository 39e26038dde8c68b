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
