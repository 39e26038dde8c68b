//! The OpenID Connect authorization-code flow's endpoints (SPEC §15): `_oidc`,
//! `_oidc_challenge`, `_oidc_callback`, `_oidc_refresh`. The logic is in
//! `syncgate_auth::jwt::code_flow`; this is the HTTP side: query and body decoding, cookies,
//! the JSON answer or the redirect, `Cache-Control: no-store`.

use http::{HeaderValue, Method, StatusCode};
use serde_json::{json, Map, Value};
use syncgate_api_common::reply::with_header;
use syncgate_api_common::{json_reply, Reply, Request};
use syncgate_auth::jwt::code_flow::{login_cookie, CallbackQuery, CodeFlow, Login, LOGIN_COOKIE};
use syncgate_auth::AuthError;
use syncgate_core::{Database, Error, Result};

use crate::Pending;

/// The `_oidc*` endpoint names.
pub const ENDPOINTS: [&str; 4] = [
    "_oidc",
    "_oidc_challenge",
    "_oidc_callback",
    "_oidc_refresh",
];

fn flow(db: &Database) -> Result<&CodeFlow> {
    db.code_flow().ok_or_else(|| {
        Error::bad(format!(
            "OpenID Connect not configured for database {}",
            db.name()
        ))
    })
}

pub async fn handle(
    db: &Database,
    req: &Request,
    endpoint: &str,
    pending: &mut Pending,
) -> Result<Reply> {
    let allowed = match endpoint {
        "_oidc_refresh" => matches!(req.method, Method::GET | Method::POST),
        _ => req.method == Method::GET,
    };
    if !allowed {
        return Err(Error::MethodNotAllowed(format!(
            "Method {} is not allowed on {endpoint}",
            req.method
        )));
    }
    let flow = flow(db)?;
    match endpoint {
        "_oidc" | "_oidc_challenge" => {
            let start = flow
                .begin(
                    req.q("provider"),
                    req.q_bool("offline")?,
                    req.q("return_to"),
                    db.auth().cookie(),
                )
                .await?;
            pending.extra_cookies.push(start.set_cookie);
            if endpoint == "_oidc" {
                let mut r = Reply::new(Vec::new().into());
                *r.status_mut() = StatusCode::FOUND;
                Ok(no_store(with_header(
                    r,
                    "location",
                    &start.authorization_url,
                )))
            } else {
                let r = json_reply(
                    401,
                    &json!({"error": "unauthorized", "reason": "Login required"}),
                );
                let quoted = start
                    .authorization_url
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"");
                Ok(no_store(with_header(
                    r,
                    "www-authenticate",
                    &format!("OIDC login=\"{quoted}\""),
                )))
            }
        }
        "_oidc_callback" => {
            let q = CallbackQuery {
                code: req.q("code").map(str::to_string),
                state: req.q("state").map(str::to_string),
                error: req.q("error").map(str::to_string),
                error_description: req.q("error_description").map(str::to_string),
                iss: req.q("iss").map(str::to_string),
                provider: req.q("provider").map(str::to_string),
            };
            // the login cookie is used up with the transaction, whatever the outcome
            pending
                .extra_cookies
                .push(login_cookie(db.auth().cookie(), "", 0));
            let login = flow
                .callback(&q, cookie(req, LOGIN_COOKIE), db.auth().principals())
                .await?;
            answer(db, login, pending).await
        }
        _ => {
            let (token, provider) = refresh_params(req)?;
            let login = flow
                .refresh(provider.as_deref(), &token, db.auth().principals())
                .await?;
            answer(db, login, pending).await
        }
    }
}

/// `refresh_token` and `provider` from a JSON or form body (POST) or the query (GET, SG).
fn refresh_params(req: &Request) -> Result<(String, Option<String>)> {
    let fields: Vec<(String, String)> = if req.method == Method::GET {
        req.query.clone()
    } else {
        let ct = req
            .header("content-type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if ct == "application/x-www-form-urlencoded" {
            // a form body carries the refresh token itself: no cross-site write can forge it
            let text = std::str::from_utf8(req.attachment_body())
                .map_err(|_| Error::bad("The form body is not UTF-8"))?;
            syncgate_api_common::request::parse_query(text)?
        } else {
            match req.json_or_empty()? {
                Value::Object(m) => {
                    let mut out = Vec::new();
                    for (k, v) in m {
                        match v {
                            Value::String(s) => out.push((k, s)),
                            Value::Null => {}
                            // the value is never echoed (it may be a token)
                            _ => return Err(Error::bad(format!("'{k}' must be a string"))),
                        }
                    }
                    out
                }
                _ => return Err(Error::bad("The _oidc_refresh body must be a JSON object")),
            }
        }
    };
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let token = get("refresh_token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::bad("Refresh token must be present for oidc refresh"))?;
    Ok((token, get("provider")))
}

/// A cookie's value on the request.
fn cookie<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn no_store(mut r: Reply) -> Reply {
    let h = r.headers_mut();
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// The session (unless `disable_session`) and the answer: SG's JSON, or a redirect to the
/// login's `return_to` with the session cookie.
async fn answer(db: &Database, login: Login, pending: &mut Pending) -> Result<Reply> {
    let session = if login.disable_session {
        None
    } else {
        let s = db
            .auth()
            .create_session(&login.username, login.session_ttl, false)
            .await
            .map_err(|e| match e {
                AuthError::BadRequest(m) | AuthError::NotFound(m) => Error::Unauthorized {
                    reason: format!("Invalid login: {m}"),
                    challenge: false,
                },
                e => e.into(),
            })?;
        pending.set_cookie = s.set_cookie.clone();
        Some(s.id)
    };
    if let Some(to) = &login.return_to {
        let mut r = Reply::new(Vec::new().into());
        *r.status_mut() = StatusCode::FOUND;
        return Ok(no_store(with_header(r, "location", to)));
    }
    let mut body = Map::new();
    body.insert("id_token".into(), json!(login.id_token));
    if let Some(t) = login.refresh_token {
        body.insert("refresh_token".into(), json!(t));
    }
    if let Some(id) = session {
        body.insert("session_id".into(), json!(id));
    }
    body.insert("name".into(), json!(login.username));
    if let Some(t) = login.access_token {
        body.insert("access_token".into(), json!(t));
        if let Some(tt) = login.token_type {
            body.insert("token_type".into(), json!(tt));
        }
        if let Some(e) = login.expires_in {
            body.insert("expires_in".into(), json!(e));
        }
    }
    Ok(no_store(json_reply(200, &Value::Object(body))))
}
