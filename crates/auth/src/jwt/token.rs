//! Compact JWS parsing, claim checks, username derivation and claim paths.
//!
//! Nothing here trusts the token: [`Jws::parse`] only splits and decodes it; the provider
//! verifies the signature before [`check_claims`] and friends look at the payload.

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use super::keys::Alg;
use super::JwtError;

/// Longest token accepted (bytes); ID tokens are a few KiB.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A split and decoded, not yet verified, compact JWS.
#[derive(Debug)]
pub struct Jws<'a> {
    pub alg: Alg,
    pub kid: Option<String>,
    /// `header.payload`, the signed bytes.
    pub signing_input: &'a str,
    /// The signature segment, base64url as sent.
    pub signature: &'a str,
    pub claims: Map<String, Value>,
}

fn b64_json(seg: &str, what: &str) -> Result<Map<String, Value>, JwtError> {
    let raw = URL_SAFE_NO_PAD
        .decode(seg)
        .map_err(|_| JwtError::Malformed(format!("{what} is not base64url")))?;
    match serde_json::from_slice::<Value>(&raw) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed(format!("{what} is not a JSON object"))),
    }
}

impl<'a> Jws<'a> {
    pub fn parse(token: &'a str) -> Result<Jws<'a>, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed("token is too long".into()));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed(
                "not a compact JWS (header.payload.signature)".into(),
            ));
        };
        let header = b64_json(h, "header")?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) if a.eq_ignore_ascii_case("none") => {
                return Err(JwtError::AlgNone)
            }
            Some(Value::String(a)) => Alg::parse(a)
                .ok_or_else(|| JwtError::AlgNotAllowed(a.chars().take(16).collect::<String>()))?,
            _ => return Err(JwtError::Malformed("header has no \"alg\"".into())),
        };
        if header.contains_key("crit") {
            return Err(JwtError::Malformed(
                "header has \"crit\" extensions, which are not supported".into(),
            ));
        }
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(JwtError::Malformed("header \"kid\" is not a string".into())),
        };
        if s.is_empty() {
            return Err(JwtError::BadSignature);
        }
        let claims = b64_json(p, "payload")?;
        Ok(Jws {
            alg,
            kid,
            signing_input: &token[..h.len() + 1 + p.len()],
            signature: s,
            claims,
        })
    }

    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// `aud` as a list (a string or an array of strings; other members are ignored).
    pub fn audiences(&self) -> Vec<&str> {
        match self.claims.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

/// Time checks; `now` in seconds since the epoch.
#[derive(Debug, Clone, Copy)]
pub struct TimeRules {
    pub now: i64,
    pub leeway: i64,
    /// `local_jwt` `skip_expiry_check`: no `exp`/`nbf` checks.
    pub skip_expiry: bool,
}

fn numeric(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f.floor() as i64))
            .map(Some)
            .ok_or(JwtError::BadClaim(name, "is not a number")),
        Some(_) => Err(JwtError::BadClaim(name, "is not a number")),
    }
}

/// Checks `exp`, `nbf`, `iat` and `sub`; returns `exp` (if any).
pub fn check_times_and_subject(
    claims: &Map<String, Value>,
    t: TimeRules,
) -> Result<Option<i64>, JwtError> {
    let exp = numeric(claims, "exp")?;
    let nbf = numeric(claims, "nbf")?;
    let iat = numeric(claims, "iat")?;
    if !t.skip_expiry {
        match exp {
            None => return Err(JwtError::MissingExp),
            Some(e) if t.now > e.saturating_add(t.leeway) => return Err(JwtError::Expired),
            _ => {}
        }
        if let Some(n) = nbf {
            if n > t.now.saturating_add(t.leeway) {
                return Err(JwtError::NotYetValid);
            }
        }
    }
    if let Some(i) = iat {
        if i > t.now.saturating_add(t.leeway) {
            return Err(JwtError::IssuedInFuture);
        }
    }
    match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => return Err(JwtError::MissingSub),
    }
    Ok(exp)
}

/// Looks a claim up: first as a literal top-level name (namespaced claims such as
/// `https://example.com/roles` contain dots), then as a dotted path into nested objects
/// (`realm_access.roles`, `_couchdb.roles`).
pub fn claim<'c>(claims: &'c Map<String, Value>, path: &str) -> Option<&'c Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// A roles/channels claim: absent or null → empty; a string → one; an array of strings → all.
pub fn string_set(
    claims: &Map<String, Value>,
    path: Option<&str>,
    what: &'static str,
) -> Result<BTreeSet<String>, JwtError> {
    let Some(path) = path else {
        return Ok(BTreeSet::new());
    };
    match claim(claims, path) {
        None | Some(Value::Null) => Ok(BTreeSet::new()),
        Some(Value::String(s)) => Ok([s.clone()].into()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or(JwtError::BadClaim(
                    what,
                    "must be a string or an array of strings",
                ))
            })
            .collect(),
        Some(_) => Err(JwtError::BadClaim(
            what,
            "must be a string or an array of strings",
        )),
    }
}

/// Go's `url.QueryEscape`: letters, digits and `-_.~` stay, space → `+`, the rest `%XX`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The prefix SG uses when neither `user_prefix` nor `username_claim` is set: the escaped
/// host and path of the issuer URL, or the provider name when the issuer is not a URL.
pub fn default_user_prefix(issuer: &str, provider_name: &str) -> String {
    // as Go's url.ParseRequestURI + Host + Path, on the issuer text as written
    let Some((scheme, rest)) = issuer.split_once("://") else {
        return provider_name.to_string();
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return provider_name.to_string();
    }
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let host = authority.rsplit('@').next().unwrap_or(authority);
    query_escape(&format!("{host}{path}"))
}

/// The username claim's value: a string, or a number formatted without exponent.
fn username_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => format!("{f}"),
            _ => return None,
        }),
        _ => None,
    }
}

/// Derives the syncgate user name. With an `issuer`, exactly as SG (reference §5.6). Without
/// one (a `local_jwt` provider in CouchDB mode) the claim value is the name verbatim, as
/// CouchDB takes `sub`, unless `user_prefix` is set (then `prefix_` + the escaped value).
pub fn username(
    claims: &Map<String, Value>,
    user_prefix: Option<&str>,
    username_claim: Option<&str>,
    issuer: Option<&str>,
    provider_name: &str,
) -> Result<String, JwtError> {
    let prefix = user_prefix.filter(|p| !p.is_empty());
    let claim_name = username_claim.filter(|c| !c.is_empty());
    let value = match claim_name {
        Some(c) => claim(claims, c)
            .and_then(username_value)
            .ok_or(JwtError::BadClaim(
                "username claim",
                "is missing or not a string or number",
            ))?,
        None => claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(JwtError::MissingSub)?
            .to_string(),
    };
    let name = match (prefix, claim_name, issuer) {
        (Some(p), _, _) => format!("{p}_{}", query_escape(&value)),
        (None, _, None) => value,
        (None, Some(_), Some(_)) => query_escape(&value),
        (None, None, Some(issuer)) => format!(
            "{}_{}",
            default_user_prefix(issuer, provider_name),
            query_escape(&value)
        ),
    };
    if name.is_empty() || name.len() > 239 {
        return Err(JwtError::BadClaim(
            "user name",
            "derived from the token is empty or longer than 239 bytes",
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn parse_rejects_malformed() {
        let b = |v: Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap());
        let hdr = b(json!({"alg":"RS256","kid":"k"}));
        let pl = b(json!({"sub":"x"}));
        let ok = format!("{hdr}.{pl}.c2ln");
        let j = Jws::parse(&ok).unwrap();
        assert_eq!(j.alg, Alg::RS256);
        assert_eq!(j.kid.as_deref(), Some("k"));
        assert_eq!(j.signing_input, format!("{hdr}.{pl}"));
        for (t, want) in [
            ("garbage".to_string(), "compact JWS"),
            ("e30.e30.e30".to_string(), "alg"),
            (format!("{}.{pl}.", b(json!({"alg":"none"}))), "none"),
            (format!("{}.{pl}.", b(json!({"alg":"NONE"}))), "none"),
            (format!("{}.{pl}.c2ln", b(json!({"alg":"HS1"}))), "HS1"),
            (format!("{hdr}.{pl}."), "signature"),
            (format!("{hdr}.!!.c2ln"), "payload is not base64url"),
            (
                format!("{hdr}.{}.c2ln", b(json!([1]))),
                "payload is not a JSON object",
            ),
            (
                format!("{}.{pl}.c2ln", b(json!({"alg":"RS256","crit":["b64"]}))),
                "crit",
            ),
            (format!("{hdr}.{pl}.c2ln.x"), "compact JWS"),
        ] {
            let e = Jws::parse(&t).unwrap_err().to_string();
            assert!(e.contains(want), "{t}: {e}");
        }
    }

    #[test]
    fn time_and_subject_checks() {
        let t = TimeRules {
            now: 1_000_000,
            leeway: 60,
            skip_expiry: false,
        };
        let ok = m(json!({"sub":"a","exp":1_000_100,"nbf":1_000_030,"iat":999_000}));
        assert_eq!(check_times_and_subject(&ok, t).unwrap(), Some(1_000_100));
        for (c, e) in [
            (json!({"sub":"a"}), JwtError::MissingExp),
            (json!({"sub":"a","exp":999_900}), JwtError::Expired),
            (
                json!({"sub":"a","exp":1_000_100,"nbf":1_000_061}),
                JwtError::NotYetValid,
            ),
            (
                json!({"sub":"a","exp":1_000_100,"iat":1_000_500}),
                JwtError::IssuedInFuture,
            ),
            (json!({"sub":"","exp":1_000_100}), JwtError::MissingSub),
            (json!({"exp":1_000_100}), JwtError::MissingSub),
            (
                json!({"sub":"a","exp":"soon"}),
                JwtError::BadClaim("exp", "is not a number"),
            ),
        ] {
            assert_eq!(
                check_times_and_subject(&m(c.clone()), t).unwrap_err(),
                e,
                "{c}"
            );
        }
        // within the leeway
        assert!(check_times_and_subject(&m(json!({"sub":"a","exp":999_950})), t).is_ok());
        let skip = TimeRules {
            skip_expiry: true,
            ..t
        };
        assert!(
            check_times_and_subject(&m(json!({"sub":"a","exp":1,"nbf":2_000_000})), skip).is_ok()
        );
    }

    #[test]
    fn claim_paths() {
        let c = m(json!({
            "roles": "one",
            "realm_access": {"roles": ["a", "b"]},
            "_couchdb": {"roles": ["r"]},
            "https://example.com/roles": ["ns"],
            "bad": [1],
        }));
        let set = |p: &str| string_set(&c, Some(p), "roles claim");
        assert_eq!(set("roles").unwrap(), ["one".to_string()].into());
        assert_eq!(set("realm_access.roles").unwrap().len(), 2);
        assert_eq!(set("_couchdb.roles").unwrap(), ["r".to_string()].into());
        assert_eq!(
            set("https://example.com/roles").unwrap(),
            ["ns".to_string()].into()
        );
        assert!(set("missing.path").unwrap().is_empty());
        assert!(set("bad").is_err());
        assert!(set("realm_access").is_err());
        assert!(string_set(&c, None, "x").unwrap().is_empty());
    }

    #[test]
    fn usernames_in_couchdb_mode() {
        // no issuer: the claim value is the name, unescaped (CouchDB takes sub as is)
        let c = m(json!({"sub":"auth0|123 x","email":"a b@x.org","_couchdb.roles":["_admin"]}));
        assert_eq!(username(&c, None, None, None, "p").unwrap(), "auth0|123 x");
        assert_eq!(
            username(&c, None, Some("email"), None, "p").unwrap(),
            "a b@x.org"
        );
        assert_eq!(
            username(&c, Some(""), None, None, "p").unwrap(),
            "auth0|123 x"
        );
        // user_prefix set: SG's prefix rule
        assert_eq!(
            username(&c, Some("lv"), None, None, "p").unwrap(),
            "lv_auth0%7C123+x"
        );
        assert_eq!(
            username(&m(json!({"exp":1})), None, None, None, "p").unwrap_err(),
            JwtError::MissingSub
        );
    }

    #[test]
    fn literal_dotted_claim_wins_over_the_path() {
        // LiveSync sends "_couchdb.roles" as one top-level key; a nested object of the same
        // path is only used when the literal key is absent
        let c = m(json!({"_couchdb.roles":["_admin"],"_couchdb":{"roles":["nested"]}}));
        assert_eq!(
            string_set(&c, Some("_couchdb.roles"), "roles claim").unwrap(),
            ["_admin".to_string()].into()
        );
        let c = m(json!({"_couchdb":{"roles":["nested"]}}));
        assert_eq!(
            string_set(&c, Some("_couchdb.roles"), "roles claim").unwrap(),
            ["nested".to_string()].into()
        );
    }

    #[test]
    fn usernames_as_sync_gateway() {
        let c = m(json!({"sub":"auth0|123","email":"a b@x.org","num":12345,"big":1.5}));
        let u =
            |p: Option<&str>, cl: Option<&str>, iss: &str| username(&c, p, cl, Some(iss), "prov");
        assert_eq!(
            u(Some("foo"), None, "https://x").unwrap(),
            "foo_auth0%7C123"
        );
        assert_eq!(
            u(Some("foo"), Some("email"), "https://x").unwrap(),
            "foo_a+b%40x.org"
        );
        assert_eq!(u(None, Some("email"), "https://x").unwrap(), "a+b%40x.org");
        assert_eq!(u(None, Some("num"), "https://x").unwrap(), "12345");
        assert_eq!(u(None, Some("big"), "https://x").unwrap(), "1.5");
        assert!(u(None, Some("nope"), "https://x").is_err());
        assert_eq!(
            u(None, None, "https://accounts.google.com").unwrap(),
            "accounts.google.com_auth0%7C123"
        );
        assert_eq!(
            u(None, None, "http://localhost:8080/realms/x").unwrap(),
            "localhost%3A8080%2Frealms%2Fx_auth0%7C123"
        );
        assert_eq!(u(None, None, "test_issuer").unwrap(), "prov_auth0%7C123");
        assert_eq!(
            u(Some(""), None, "test_issuer").unwrap(),
            "prov_auth0%7C123"
        );
        let long = m(json!({"sub": "x".repeat(300)}));
        assert!(username(&long, Some("p"), None, Some("i"), "n").is_err());
    }
}
