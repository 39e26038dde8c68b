//! Signature algorithms and verification keys: JWK, PEM (SPKI or PKCS#1 RSA) and HMAC secrets.
//!
//! `jsonwebtoken` verifies every algorithm it knows; ES512 (which it lacks) goes through the
//! RustCrypto `p521` crate behind the same [`VerifyKey::verify`] call. Keys are parsed and
//! checked once, when the config is loaded or a JWKS is fetched, never per request.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A JWS signature algorithm syncgate can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
    EdDSA,
}

/// What kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Hmac,
    Rsa,
    Ec(Curve),
    Ed25519,
}

/// NIST curves for ECDSA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Alg {
    pub const ALL: [Alg; 13] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::ES512,
        Alg::EdDSA,
    ];

    /// Parses a JOSE `alg` name (case-sensitive, as RFC 7518). `none` is not an algorithm here.
    pub fn parse(s: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::ES512 => "ES512",
            Alg::EdDSA => "EdDSA",
        }
    }

    pub fn key_type(self) -> KeyType {
        match self {
            Alg::HS256 | Alg::HS384 | Alg::HS512 => KeyType::Hmac,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                KeyType::Rsa
            }
            Alg::ES256 => KeyType::Ec(Curve::P256),
            Alg::ES384 => KeyType::Ec(Curve::P384),
            Alg::ES512 => KeyType::Ec(Curve::P521),
            Alg::EdDSA => KeyType::Ed25519,
        }
    }

    /// Whether this is a shared-secret algorithm (never accepted for OpenID Connect).
    pub fn is_hmac(self) -> bool {
        self.key_type() == KeyType::Hmac
    }

    /// The `jsonwebtoken` algorithm, for all but ES512.
    fn jwt(self) -> Option<Algorithm> {
        Some(match self {
            Alg::HS256 => Algorithm::HS256,
            Alg::HS384 => Algorithm::HS384,
            Alg::HS512 => Algorithm::HS512,
            Alg::RS256 => Algorithm::RS256,
            Alg::RS384 => Algorithm::RS384,
            Alg::RS512 => Algorithm::RS512,
            Alg::PS256 => Algorithm::PS256,
            Alg::PS384 => Algorithm::PS384,
            Alg::PS512 => Algorithm::PS512,
            Alg::ES256 => Algorithm::ES256,
            Alg::ES384 => Algorithm::ES384,
            Alg::EdDSA => Algorithm::EdDSA,
            Alg::ES512 => return None,
        })
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::Hmac => "HMAC secret",
            KeyType::Rsa => "RSA key",
            KeyType::Ec(Curve::P256) => "EC P-256 key",
            KeyType::Ec(Curve::P384) => "EC P-384 key",
            KeyType::Ec(Curve::P521) => "EC P-521 key",
            KeyType::Ed25519 => "Ed25519 key",
        })
    }
}

/// Smallest RSA modulus accepted.
const MIN_RSA_BITS: usize = 2048;
/// Shortest HMAC secret accepted (bytes).
pub const MIN_HMAC_BYTES: usize = 1;

enum Material {
    /// Verified by `jsonwebtoken` (HMAC, RSA, P-256, P-384, Ed25519).
    Jwt(DecodingKey),
    /// ES512, verified by `p521`.
    P521(Box<p521::ecdsa::VerifyingKey>),
}

/// One verification key with its JWK metadata.
pub struct VerifyKey {
    /// `kid`, when the key has one (JWK only).
    pub kid: Option<String>,
    /// `alg` pinned by the JWK, if any: the token's `alg` must then equal it.
    pub alg: Option<Alg>,
    pub key_type: KeyType,
    material: Material,
    /// SHA-256 over the key type and its public bytes: tells key sets apart without keeping
    /// secrets around in comparable form.
    fingerprint: [u8; 32],
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

fn fingerprint(kind: &str, kid: Option<&str>, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(kid.unwrap_or("").as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

impl VerifyKey {
    /// Whether a token signed with `alg` may be checked against this key.
    pub fn accepts(&self, alg: Alg) -> bool {
        alg.key_type() == self.key_type && self.alg.is_none_or(|a| a == alg)
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Checks `signature` (raw bytes; `signature_b64` is the same, as in the token) over
    /// `signing_input` (`header.payload`).
    pub fn verify(&self, alg: Alg, signing_input: &[u8], signature_b64: &str) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        match (&self.material, alg.jwt()) {
            (Material::Jwt(key), Some(a)) => {
                jsonwebtoken::crypto::verify(signature_b64, signing_input, key, a).unwrap_or(false)
            }
            (Material::P521(key), None) => {
                use p521::ecdsa::signature::Verifier;
                let Ok(sig) = URL_SAFE_NO_PAD.decode(signature_b64) else {
                    return false;
                };
                let Ok(sig) = p521::ecdsa::Signature::from_slice(&sig) else {
                    return false;
                };
                key.verify(signing_input, &sig).is_ok()
            }
            _ => false,
        }
    }

    /// An HMAC secret (raw bytes).
    pub fn hmac(secret: &[u8], kid: Option<String>) -> Result<VerifyKey, String> {
        if secret.len() < MIN_HMAC_BYTES {
            return Err("the HMAC secret is empty".into());
        }
        Ok(VerifyKey {
            fingerprint: fingerprint("oct", kid.as_deref(), &[&Sha256::digest(secret)]),
            kid,
            alg: None,
            key_type: KeyType::Hmac,
            material: Material::Jwt(DecodingKey::from_secret(secret)),
        })
    }

    fn rsa(n: &[u8], e: &[u8], kid: Option<String>, alg: Option<Alg>) -> Result<VerifyKey, String> {
        let n_big = rsa::BigUint::from_bytes_be(n);
        let e_big = rsa::BigUint::from_bytes_be(e);
        let bits = n_big.bits();
        rsa::RsaPublicKey::new(n_big, e_big).map_err(|e| format!("invalid RSA key: {e}"))?;
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "RSA key of {bits} bits is too short (at least {MIN_RSA_BITS})"
            ));
        }
        Ok(VerifyKey {
            fingerprint: fingerprint("RSA", kid.as_deref(), &[n, e]),
            kid,
            alg,
            key_type: KeyType::Rsa,
            material: Material::Jwt(DecodingKey::from_rsa_raw_components(n, e)),
        })
    }

    /// An EC public key from its SEC1 point encoding.
    fn ec(point: &[u8], kid: Option<String>, alg: Option<Alg>) -> Result<VerifyKey, String> {
        let curve = match point.len() {
            33 | 65 => Curve::P256,
            49 | 97 => Curve::P384,
            67 | 133 => Curve::P521,
            n => return Err(format!("unsupported EC public key ({n} bytes)")),
        };
        let material = match curve {
            Curve::P521 => Material::P521(Box::new(
                p521::ecdsa::VerifyingKey::from_sec1_bytes(point)
                    .map_err(|_| "invalid EC P-521 public key".to_string())?,
            )),
            Curve::P256 | Curve::P384 => {
                let key = DecodingKey::from_ec_der(point);
                let a = if curve == Curve::P256 {
                    Algorithm::ES256
                } else {
                    Algorithm::ES384
                };
                // building the verifier decodes the point: a key off the curve fails here
                (DEFAULT_PROVIDER.verifier_factory)(&a, &key)
                    .map_err(|_| format!("invalid {} public key", KeyType::Ec(curve)))?;
                Material::Jwt(key)
            }
        };
        Ok(VerifyKey {
            fingerprint: fingerprint("EC", kid.as_deref(), &[point]),
            kid,
            alg,
            key_type: KeyType::Ec(curve),
            material,
        })
    }

    fn ed25519(x: &[u8], kid: Option<String>, alg: Option<Alg>) -> Result<VerifyKey, String> {
        if x.len() != 32 {
            return Err(format!(
                "invalid Ed25519 public key ({} bytes, expected 32)",
                x.len()
            ));
        }
        let key = DecodingKey::from_ed_der(x);
        (DEFAULT_PROVIDER.verifier_factory)(&Algorithm::EdDSA, &key)
            .map_err(|_| "invalid Ed25519 public key".to_string())?;
        Ok(VerifyKey {
            fingerprint: fingerprint("OKP", kid.as_deref(), &[x]),
            kid,
            alg,
            key_type: KeyType::Ed25519,
            material: Material::Jwt(key),
        })
    }

    /// A PEM public key: `PUBLIC KEY` (SPKI: RSA, EC P-256/384/521, Ed25519) or
    /// `RSA PUBLIC KEY` (PKCS#1).
    pub fn from_pem(text: &str) -> Result<VerifyKey, String> {
        let text = text.trim();
        let label = text
            .strip_prefix("-----BEGIN ")
            .and_then(|r| r.split_once("-----"))
            .map(|(l, _)| l)
            .ok_or("not a PEM block (expected -----BEGIN PUBLIC KEY-----)")?;
        match label {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
            l if l.contains("PRIVATE") => {
                return Err(format!(
                    "is a private key ({l}); configure the public key instead"
                ))
            }
            l => {
                return Err(format!(
                    "unsupported PEM block \"{l}\" (expected PUBLIC KEY or RSA PUBLIC KEY)"
                ))
            }
        }
        if let Ok(k) = DecodingKey::from_rsa_pem(text.as_bytes()) {
            let der = k
                .try_get_as_bytes()
                .map_err(|_| "unreadable RSA key".to_string())?;
            use rsa::pkcs1::DecodeRsaPublicKey;
            use rsa::traits::PublicKeyParts;
            let pk = rsa::RsaPublicKey::from_pkcs1_der(der)
                .map_err(|e| format!("invalid RSA public key: {e}"))?;
            return VerifyKey::rsa(&pk.n().to_bytes_be(), &pk.e().to_bytes_be(), None, None);
        }
        if let Ok(k) = DecodingKey::from_ec_pem(text.as_bytes()) {
            let point = k
                .try_get_as_bytes()
                .map_err(|_| "unreadable EC key".to_string())?;
            return VerifyKey::ec(point, None, None);
        }
        if let Ok(k) = DecodingKey::from_ed_pem(text.as_bytes()) {
            let x = k
                .try_get_as_bytes()
                .map_err(|_| "unreadable Ed25519 key".to_string())?;
            return VerifyKey::ed25519(x, None, None);
        }
        Err("unparsable PEM public key (supported: RSA, EC P-256/P-384/P-521, Ed25519)".into())
    }

    /// A JWK. Returns `Ok(None)` for a well-formed key that is not for signatures
    /// (`use` other than `sig`), which key sets skip.
    pub fn from_jwk(jwk: &Value) -> Result<Option<VerifyKey>, String> {
        let obj = jwk.as_object().ok_or("a JWK must be a JSON object")?;
        let field = |name: &str| -> Result<Option<&str>, String> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(format!("JWK member \"{name}\" must be a string")),
            }
        };
        let bytes = |name: &str| -> Result<Vec<u8>, String> {
            let s = field(name)?.ok_or_else(|| format!("JWK member \"{name}\" is missing"))?;
            URL_SAFE_NO_PAD
                .decode(s.trim_end_matches('='))
                .map_err(|_| format!("JWK member \"{name}\" is not base64url"))
        };
        if let Some(u) = field("use")? {
            if u != "sig" {
                return Ok(None);
            }
        }
        let kid = field("kid")?.map(str::to_string);
        let alg = match field("alg")? {
            None => None,
            Some(a) => Some(Alg::parse(a).ok_or_else(|| {
                format!("JWK \"alg\" \"{a}\" is not a supported signature algorithm")
            })?),
        };
        let kty = field("kty")?.ok_or("JWK member \"kty\" is missing")?;
        let key = match kty {
            "RSA" => VerifyKey::rsa(&bytes("n")?, &bytes("e")?, kid, alg)?,
            "EC" => {
                let crv = field("crv")?.ok_or("JWK member \"crv\" is missing")?;
                let (want, len) = match crv {
                    "P-256" => (Curve::P256, 32),
                    "P-384" => (Curve::P384, 48),
                    "P-521" => (Curve::P521, 66),
                    c => return Err(format!("unsupported EC curve \"{c}\"")),
                };
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != len || y.len() != len {
                    return Err(format!("JWK {crv} coordinates must be {len} bytes"));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let k = VerifyKey::ec(&point, kid, alg)?;
                debug_assert_eq!(k.key_type, KeyType::Ec(want));
                k
            }
            "OKP" => match field("crv")? {
                Some("Ed25519") => VerifyKey::ed25519(&bytes("x")?, kid, alg)?,
                Some(c) => return Err(format!("unsupported OKP curve \"{c}\"")),
                None => return Err("JWK member \"crv\" is missing".into()),
            },
            "oct" => {
                let k = bytes("k")?;
                let mut key = VerifyKey::hmac(&k, kid)?;
                key.alg = alg;
                key
            }
            t => return Err(format!("unsupported JWK key type \"{t}\"")),
        };
        if let Some(a) = key.alg {
            if a.key_type() != key.key_type {
                return Err(format!("JWK \"alg\" {a} does not fit its {}", key.key_type));
            }
        }
        Ok(Some(key))
    }
}

/// Parses a JWKS document (`{"keys":[...]}`) from a provider. Keys that cannot be used are
/// skipped (a provider may publish encryption keys or algorithms we do not support); the
/// second value counts them.
pub fn parse_jwks(doc: &Value) -> Result<(Vec<VerifyKey>, usize), String> {
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS document has no \"keys\" array")?;
    let mut out = Vec::with_capacity(keys.len());
    let mut skipped = 0;
    for k in keys {
        match VerifyKey::from_jwk(k) {
            Ok(Some(key)) => out.push(key),
            Ok(None) | Err(_) => skipped += 1,
        }
    }
    Ok((out, skipped))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    pub const RSA_PRIVATE: &str = include_str!("testdata/rsa_private.pem");
    pub const RSA_PUBLIC_SPKI: &str = include_str!("testdata/rsa_public_spki.pem");
    pub const RSA_PUBLIC_PKCS1: &str = include_str!("testdata/rsa_public_pkcs1.pem");
    pub const RSA2_PUBLIC: &str = include_str!("testdata/rsa2_public.pem");
    pub const EC256_PRIVATE: &str = include_str!("testdata/ec256_private.pem");
    pub const EC256_PUBLIC: &str = include_str!("testdata/ec256_public.pem");
    pub const EC384_PRIVATE: &str = include_str!("testdata/ec384_private.pem");
    pub const EC384_PUBLIC: &str = include_str!("testdata/ec384_public.pem");
    pub const EC521_PRIVATE_HEX: &str = include_str!("testdata/ec521_private.hex");
    pub const EC521_PUBLIC: &str = include_str!("testdata/ec521_public.pem");
    pub const ED_PRIVATE: &str = include_str!("testdata/ed25519_private.pem");
    pub const ED_PUBLIC: &str = include_str!("testdata/ed25519_public.pem");

    /// Signs `claims` with `alg` using the test key for that algorithm (or `secret` for HS*).
    pub fn sign(alg: Alg, kid: Option<&str>, claims: &Value, secret: &[u8]) -> String {
        let header = json!({"alg": alg.name(), "typ": "JWT", "kid": kid});
        let mut header = header.as_object().cloned().unwrap();
        if kid.is_none() {
            header.remove("kid");
        }
        sign_raw(&Value::Object(header), claims, alg, secret)
    }

    pub fn sign_raw(header: &Value, claims: &Value, alg: Alg, secret: &[u8]) -> String {
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = match alg {
            Alg::ES512 => {
                use p521::ecdsa::signature::RandomizedSigner;
                let sk = p521::ecdsa::SigningKey::from_slice(
                    &hex::decode(EC521_PRIVATE_HEX.trim()).unwrap(),
                )
                .unwrap();
                let sig: p521::ecdsa::Signature =
                    sk.sign_with_rng(&mut rand::rngs::OsRng, input.as_bytes());
                URL_SAFE_NO_PAD.encode(sig.to_bytes())
            }
            _ => {
                let key = match alg.key_type() {
                    KeyType::Hmac => EncodingKey::from_secret(secret),
                    KeyType::Rsa => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
                    KeyType::Ec(Curve::P256) => {
                        EncodingKey::from_ec_pem(EC256_PRIVATE.as_bytes()).unwrap()
                    }
                    KeyType::Ec(_) => EncodingKey::from_ec_pem(EC384_PRIVATE.as_bytes()).unwrap(),
                    KeyType::Ed25519 => EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
                };
                jsonwebtoken::crypto::sign(input.as_bytes(), &key, alg.jwt().unwrap()).unwrap()
            }
        };
        format!("{input}.{sig}")
    }

    fn check(key: &VerifyKey, token: &str, alg: Alg) -> bool {
        let (input, sig) = token.rsplit_once('.').unwrap();
        key.verify(alg, input.as_bytes(), sig)
    }

    #[test]
    fn every_algorithm_verifies_and_rejects_tampering() {
        let claims = json!({"sub": "u", "iss": "i"});
        let secret = b"0123456789abcdef0123456789abcdef";
        for alg in Alg::ALL {
            let key = match alg.key_type() {
                KeyType::Hmac => VerifyKey::hmac(secret, None).unwrap(),
                KeyType::Rsa => VerifyKey::from_pem(RSA_PUBLIC_SPKI).unwrap(),
                KeyType::Ec(Curve::P256) => VerifyKey::from_pem(EC256_PUBLIC).unwrap(),
                KeyType::Ec(Curve::P384) => VerifyKey::from_pem(EC384_PUBLIC).unwrap(),
                KeyType::Ec(Curve::P521) => VerifyKey::from_pem(EC521_PUBLIC).unwrap(),
                KeyType::Ed25519 => VerifyKey::from_pem(ED_PUBLIC).unwrap(),
            };
            let token = sign(alg, None, &claims, secret);
            assert!(check(&key, &token, alg), "{alg} should verify");
            // another payload with the same signature
            let mut parts: Vec<&str> = token.split('.').collect();
            let other = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin","iss":"i"}"#);
            parts[1] = &other;
            assert!(!check(&key, &parts.join("."), alg), "{alg} tampered");
            // a key of the right type but the wrong value
            if alg.key_type() == KeyType::Rsa {
                let k2 = VerifyKey::from_pem(RSA2_PUBLIC).unwrap();
                assert!(!check(&k2, &token, alg));
            }
            if alg.is_hmac() {
                let k2 = VerifyKey::hmac(b"another secret", None).unwrap();
                assert!(!check(&k2, &token, alg));
            }
        }
    }

    #[test]
    fn algorithm_must_fit_key_type() {
        let rsa = VerifyKey::from_pem(RSA_PUBLIC_PKCS1).unwrap();
        assert_eq!(rsa.key_type, KeyType::Rsa);
        for a in [Alg::RS256, Alg::PS512] {
            assert!(rsa.accepts(a));
        }
        for a in [Alg::HS256, Alg::ES256, Alg::EdDSA] {
            assert!(!rsa.accepts(a));
        }
        // key confusion: an HS256 token "signed" with the RSA public key as HMAC secret
        let secret = RSA_PUBLIC_SPKI.as_bytes();
        let token = sign(Alg::HS256, None, &json!({}), secret);
        assert!(!check(&rsa, &token, Alg::HS256));
        let ec = VerifyKey::from_pem(EC384_PUBLIC).unwrap();
        assert!(ec.accepts(Alg::ES384) && !ec.accepts(Alg::ES256) && !ec.accepts(Alg::ES512));
        let ec521 = VerifyKey::from_pem(EC521_PUBLIC).unwrap();
        assert_eq!(ec521.key_type, KeyType::Ec(Curve::P521));
        // an ES256 signature is not an ES512 one
        let t = sign(Alg::ES256, None, &json!({}), b"");
        assert!(!check(&ec521, &t, Alg::ES512));
    }

    #[test]
    fn jwk_parsing() {
        use rsa::pkcs1::DecodeRsaPublicKey;
        use rsa::traits::PublicKeyParts;
        let pk = rsa::RsaPublicKey::from_pkcs1_pem(RSA_PUBLIC_PKCS1).unwrap();
        let n = URL_SAFE_NO_PAD.encode(pk.n().to_bytes_be());
        let jwk = json!({"kty":"RSA","kid":"k1","alg":"RS256","use":"sig","n":n,"e":"AQAB"});
        let key = VerifyKey::from_jwk(&jwk).unwrap().unwrap();
        assert_eq!(key.kid.as_deref(), Some("k1"));
        assert!(key.accepts(Alg::RS256) && !key.accepts(Alg::PS256));
        let t = sign(Alg::RS256, Some("k1"), &json!({"a":1}), b"");
        assert!(check(&key, &t, Alg::RS256));
        // same key as PEM: same fingerprint apart from the kid
        assert_ne!(
            key.fingerprint(),
            VerifyKey::from_pem(RSA_PUBLIC_SPKI).unwrap().fingerprint()
        );
        // encryption keys are skipped, bad ones are errors
        assert!(
            VerifyKey::from_jwk(&json!({"kty":"RSA","use":"enc","n":n,"e":"AQAB"}))
                .unwrap()
                .is_none()
        );
        for (bad, needle) in [
            (json!({"kty":"RSA","n":"AQAB","e":"AQAB"}), "RSA"),
            (json!({"kty":"RSA","e":"AQAB"}), "\"n\" is missing"),
            (
                json!({"kty":"EC","crv":"P-256","x":"AA","y":"AA"}),
                "32 bytes",
            ),
            (
                json!({"kty":"EC","crv":"secp256k1","x":"AA","y":"AA"}),
                "curve",
            ),
            (json!({"kty":"OKP","crv":"Ed25519","x":"AAAA"}), "32"),
            (json!({"kty":"OKP","crv":"X25519","x":"AAAA"}), "OKP curve"),
            (json!({"kty":"oct","k":""}), "empty"),
            (
                json!({"kty":"oct","k":"c2VjcmV0","alg":"RS256"}),
                "does not fit",
            ),
            (
                json!({"kty":"RSA","n":n,"e":"AQAB","alg":"none"}),
                "not a supported",
            ),
            (json!({"kty":"XYZ"}), "key type"),
            (json!("x"), "object"),
        ] {
            let e = VerifyKey::from_jwk(&bad).err().unwrap_or_default();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        // EC and Ed JWKs
        let ed = VerifyKey::from_pem(ED_PUBLIC).unwrap();
        assert_eq!(ed.key_type, KeyType::Ed25519);
        let (keys, skipped) = parse_jwks(&json!({"keys":[jwk, {"kty":"weird"}]})).unwrap();
        assert_eq!((keys.len(), skipped), (1, 1));
        assert!(parse_jwks(&json!({"nokeys":[]})).is_err());
    }

    #[test]
    fn pem_errors() {
        for (pem, needle) in [
            (RSA_PRIVATE, "private key"),
            (EC256_PRIVATE, "private key"),
            ("hello", "not a PEM"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
                "unsupported PEM",
            ),
            (
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
                "unparsable",
            ),
        ] {
            let e = VerifyKey::from_pem(pem).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
