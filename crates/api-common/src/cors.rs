//! CORS for browser and app clients (`app://obsidian.md`, `capacitor://localhost`,
//! `http://localhost`, …).
//!
//! The policy is the database's `cors` block when it has one, else the server's `CORS`. For a
//! request whose `Origin` is listed (or the list has `*`), every response — errors included, so
//! a client can read its 401 — echoes that origin in `Access-Control-Allow-Origin` (never a
//! literal `*`: credentials are allowed) with `Access-Control-Allow-Credentials: true`.
//! `OPTIONS` is a preflight answered here without authentication. Login and logout
//! (`/_session`) additionally require the origin to be in `login_origin`.

use http::{HeaderMap, HeaderValue};
use syncgate_core::config::{DbCors, ServerCors};
use syncgate_core::{Database, Server};

use crate::reply::{bytes_reply, Reply};

/// Methods the API serves, for `Allow` and `Access-Control-Allow-Methods`.
pub const METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS";
/// Request headers always allowed in a preflight (what PouchDB and fetch clients send).
const DEFAULT_HEADERS: &[&str] = &[
    "Accept",
    "Authorization",
    "Content-Type",
    "If-Match",
    "X-Requested-With",
];
/// Response headers a script may read.
const EXPOSE_HEADERS: &str = "ETag, Location, Retry-After, Content-Type";

/// The CORS settings that apply to one request.
#[derive(Debug, Clone, Copy)]
pub struct CorsPolicy<'a> {
    pub origin: &'a [String],
    pub login_origin: &'a [String],
    pub headers: &'a [String],
    pub max_age: Option<u64>,
}

impl<'a> CorsPolicy<'a> {
    fn from_server(c: &'a ServerCors) -> Self {
        CorsPolicy {
            origin: &c.origin,
            login_origin: &c.login_origin,
            headers: &c.headers,
            max_age: c.max_age,
        }
    }

    fn from_db(c: &'a DbCors) -> Self {
        CorsPolicy {
            origin: &c.origin,
            login_origin: &c.login_origin,
            headers: &c.headers,
            max_age: c.max_age,
        }
    }

    fn is_empty(&self) -> bool {
        self.origin.is_empty()
            && self.login_origin.is_empty()
            && self.headers.is_empty()
            && self.max_age.is_none()
    }

    /// Whether responses to `origin` may be read by its scripts.
    pub fn allows(&self, origin: &str) -> bool {
        listed(self.origin, origin)
    }
}

fn listed(list: &[String], origin: &str) -> bool {
    list.iter().any(|o| o == "*" || o == origin)
}

/// The policy for a request to `db` (or to no database): the database's own `cors`, else the
/// server's `CORS`; `None` when neither is configured.
pub fn policy<'a>(server: &'a Server, db: Option<&'a Database>) -> Option<CorsPolicy<'a>> {
    let p = match db.and_then(|d| d.config().cors.as_ref()) {
        Some(c) => CorsPolicy::from_db(c),
        None => CorsPolicy::from_server(server.config.cors.as_ref()?),
    };
    (!p.is_empty()).then_some(p)
}

fn origin(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
}

fn set(r: &mut Reply, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// Adds the CORS response headers when the request's origin is allowed.
pub fn apply(r: &mut Reply, headers: &HeaderMap, policy: Option<CorsPolicy<'_>>) {
    let Some(p) = policy else {
        return;
    };
    r.headers_mut()
        .append(http::header::VARY, HeaderValue::from_static("Origin"));
    let Some(o) = origin(headers) else {
        return;
    };
    if p.allows(o) {
        set(r, "access-control-allow-origin", o);
        set(r, "access-control-allow-credentials", "true");
        set(r, "access-control-expose-headers", EXPOSE_HEADERS);
    }
}

/// Answers an `OPTIONS` request: 204 with `Allow`, and the preflight headers when the origin is
/// allowed. No authentication.
pub fn preflight(headers: &HeaderMap, policy: Option<CorsPolicy<'_>>) -> Reply {
    let mut r = bytes_reply(204, "text/plain", Vec::new());
    r.headers_mut().remove(http::header::CONTENT_TYPE);
    set(&mut r, "allow", METHODS);
    if let (Some(p), Some(o)) = (policy, origin(headers)) {
        if p.allows(o) {
            set(&mut r, "access-control-allow-methods", METHODS);
            let mut allowed: Vec<&str> = DEFAULT_HEADERS.to_vec();
            for h in p.headers {
                if !allowed.iter().any(|a| a.eq_ignore_ascii_case(h)) {
                    allowed.push(h);
                }
            }
            set(&mut r, "access-control-allow-headers", &allowed.join(", "));
            set(
                &mut r,
                "access-control-max-age",
                &p.max_age.unwrap_or(600).to_string(),
            );
        }
    }
    apply(&mut r, headers, policy);
    r
}

/// Whether a login or logout (`POST`/`DELETE /{db}/_session`) from this request's origin is
/// allowed: no `Origin` header, or an origin in `login_origin`.
pub fn login_allowed(headers: &HeaderMap, policy: Option<CorsPolicy<'_>>) -> bool {
    match origin(headers) {
        None => true,
        Some(o) => policy.is_some_and(|p| listed(p.login_origin, o)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        h
    }

    #[test]
    fn echoes_allowed_origins_only() {
        let origins = vec![
            "app://obsidian.md".to_string(),
            "http://localhost".to_string(),
        ];
        let login = vec!["app://obsidian.md".to_string()];
        let p = CorsPolicy {
            origin: &origins,
            login_origin: &login,
            headers: &[],
            max_age: Some(60),
        };
        let mut r = bytes_reply(200, "application/json", b"{}".to_vec());
        apply(&mut r, &hdrs("app://obsidian.md"), Some(p));
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "app://obsidian.md"
        );
        assert_eq!(r.headers()["access-control-allow-credentials"], "true");
        let mut r = bytes_reply(200, "application/json", b"{}".to_vec());
        apply(&mut r, &hdrs("https://evil.example"), Some(p));
        assert!(r.headers().get("access-control-allow-origin").is_none());
        let pf = preflight(&hdrs("http://localhost"), Some(p));
        assert_eq!(pf.status(), 204);
        assert_eq!(pf.headers()["access-control-max-age"], "60");
        assert!(pf.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("Authorization"));
        assert!(login_allowed(&hdrs("app://obsidian.md"), Some(p)));
        assert!(!login_allowed(&hdrs("http://localhost"), Some(p)));
        assert!(!login_allowed(&hdrs("http://localhost"), None));
        assert!(login_allowed(&HeaderMap::new(), None));
        // a listed "*" still echoes the origin (never "*" with credentials)
        let star = vec!["*".to_string()];
        let p = CorsPolicy {
            origin: &star,
            login_origin: &[],
            headers: &[],
            max_age: None,
        };
        let mut r = bytes_reply(200, "application/json", b"{}".to_vec());
        apply(&mut r, &hdrs("capacitor://localhost"), Some(p));
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "capacitor://localhost"
        );
    }
}
