//! Admin routes for users, roles and sessions:
//!
//! - `GET|POST /{db}/_user/`, `GET|HEAD|PUT|DELETE /{db}/_user/{name}`,
//!   `GET|DELETE /{db}/_user/{name}/_session`, `DELETE /{db}/_user/{name}/_session/{id|handle}`
//! - `GET|POST /{db}/_role/`, `GET|HEAD|PUT|DELETE /{db}/_role/{name}`
//! - `POST /{db}/_session` (custom auth: a session for a named user),
//!   `GET|DELETE /{db}/_session/{id}`

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use syncgate_api_common::{json_reply, routes, Reply, Request};
use syncgate_auth::sessions::{rfc3339, MAX_TTL_SECS};
use syncgate_auth::WriteMode;
use syncgate_core::{Database, Error, Result};

use crate::sessions;

fn not_allowed(req: &Request, what: &str) -> Error {
    Error::MethodNotAllowed(format!("Method {} is not allowed on {what}", req.method))
}

fn ok(status: u16) -> Reply {
    json_reply(status, &json!({"ok": true}))
}

/// `/{db}/_user/…`; `rest` is the path after `_user`.
pub async fn user_routes(db: &Database, req: &Request, rest: &[String]) -> Result<Reply> {
    let auth = &db.auth();
    match rest {
        [] => match req.method {
            Method::GET | Method::HEAD => {
                let names = auth.principals().user_names().await?;
                let name_only = !matches!(req.q("name_only"), Some("false"));
                let limit = req.q_u64("limit")?;
                let include_access = req.q_bool("include_access")?;
                if name_only {
                    if limit.is_some() || include_access {
                        return Err(Error::bad(
                            "'limit' and 'include_access' are only supported with name_only=false",
                        ));
                    }
                    return Ok(json_reply(200, &json!(names)));
                }
                let mut out = Vec::new();
                for n in names
                    .iter()
                    .take(limit.map(|l| l as usize).unwrap_or(usize::MAX))
                {
                    if let Some(u) = auth.principals().get_user(n).await? {
                        if include_access {
                            // the same object as GET /{db}/_user/{name}
                            out.push(auth.principals().user_json(&u).await?);
                            continue;
                        }
                        out.push(json!({
                            "name": u.name,
                            "email": u.email.unwrap_or_default(),
                            "disabled": u.disabled,
                        }));
                    }
                }
                Ok(json_reply(200, &Value::Array(out)))
            }
            Method::POST => {
                auth.put_user(None, req.json()?, WriteMode::Create).await?;
                Ok(ok(201))
            }
            _ => Err(not_allowed(req, "_user/")),
        },
        [name] => match req.method {
            Method::GET | Method::HEAD => {
                let u = auth
                    .principals()
                    .get_user_or_guest(name)
                    .await?
                    .ok_or_else(|| Error::not_found(format!("No such user \"{}\"", short(name))))?;
                Ok(json_reply(200, &auth.principals().user_json(&u).await?))
            }
            Method::PUT => {
                let (_, w) = auth
                    .put_user(Some(name), req.json()?, WriteMode::Upsert)
                    .await?;
                Ok(ok(if w.created { 201 } else { 200 }))
            }
            Method::DELETE => {
                auth.delete_user(name).await?;
                Ok(ok(200))
            }
            _ => Err(not_allowed(req, "a user")),
        },
        [name, s] if s == "_session" => match req.method {
            Method::GET | Method::HEAD => {
                let user =
                    auth.principals().get_user(name).await?.ok_or_else(|| {
                        Error::not_found(format!("No such user \"{}\"", short(name)))
                    })?;
                let mut list = auth.user_sessions(&user).await?;
                list.sort_by_key(|(_, r)| r.expires_ms);
                let out: Vec<Value> = list
                    .iter()
                    .map(|(handle, r)| sessions::json(handle, r))
                    .collect();
                Ok(json_reply(200, &Value::Array(out)))
            }
            Method::DELETE => {
                if auth.principals().get_user(name).await?.is_none() {
                    return Err(Error::not_found(format!(
                        "No such user \"{}\"",
                        short(name)
                    )));
                }
                auth.revoke_sessions(name).await?;
                Ok(ok(200))
            }
            _ => Err(not_allowed(req, "a user's sessions")),
        },
        [name, s, id] if s == "_session" => match req.method {
            Method::DELETE if syncgate_auth::sessions::is_handle(id) => {
                if !auth.revoke_session_handle(name, id).await? {
                    return Err(Error::not_found(format!(
                        "No such session for user \"{}\"",
                        short(name)
                    )));
                }
                Ok(ok(200))
            }
            Method::DELETE => {
                let owned = auth
                    .live_session(id)
                    .await?
                    .is_some_and(|(rec, _)| rec.username == *name);
                if !owned || !auth.delete_session(id).await? {
                    return Err(Error::not_found(format!(
                        "No such session for user \"{}\"",
                        short(name)
                    )));
                }
                Ok(ok(200))
            }
            _ => Err(not_allowed(req, "a session")),
        },
        _ => Err(Error::not_found("unknown URL")),
    }
}

/// `/{db}/_role/…`.
pub async fn role_routes(db: &Database, req: &Request, rest: &[String]) -> Result<Reply> {
    let auth = &db.auth();
    match rest {
        [] => match req.method {
            Method::GET | Method::HEAD => Ok(json_reply(
                200,
                &json!(auth.principals().role_names().await?),
            )),
            Method::POST => {
                auth.put_role(None, req.json()?, WriteMode::Create).await?;
                Ok(ok(201))
            }
            _ => Err(not_allowed(req, "_role/")),
        },
        [name] => match req.method {
            Method::GET | Method::HEAD => {
                let r =
                    auth.principals().get_role(name).await?.ok_or_else(|| {
                        Error::not_found(format!("No such role \"{}\"", short(name)))
                    })?;
                Ok(json_reply(200, &auth.principals().role_json(&r)))
            }
            Method::PUT => {
                let (_, created) = auth
                    .put_role(Some(name), req.json()?, WriteMode::Upsert)
                    .await?;
                Ok(ok(if created { 201 } else { 200 }))
            }
            Method::DELETE => {
                auth.delete_role(name).await?;
                Ok(ok(200))
            }
            _ => Err(not_allowed(req, "a role")),
        },
        _ => Err(Error::not_found("unknown URL")),
    }
}

/// The TTL of an admin session request: a positive number of seconds.
fn ttl(v: Option<&Value>) -> Result<Option<Duration>> {
    let bad = || Error::bad("Invalid or missing ttl: expected a positive number of seconds");
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => {
            let secs = n.as_f64().ok_or_else(bad)?;
            if secs.is_nan() || secs <= 0.0 || secs > MAX_TTL_SECS as f64 {
                return Err(bad());
            }
            Ok(Some(Duration::from_secs_f64(secs)))
        }
        Some(_) => Err(bad()),
    }
}

/// `/{db}/_session…` on the admin port.
pub async fn session_routes(db: &Database, req: &Request, rest: &[String]) -> Result<Reply> {
    let auth = &db.auth();
    match rest {
        [] => match req.method {
            Method::POST => {
                let Value::Object(body) = req.json()? else {
                    return Err(Error::bad("The _session body must be a JSON object"));
                };
                if let Some(k) = body.keys().find(|k| *k != "name" && *k != "ttl") {
                    return Err(Error::bad(format!(
                        "Unknown key \"{}\" in the _session body (expected name, ttl)",
                        short(k)
                    )));
                }
                let name = match body.get("name") {
                    Some(Value::String(n)) => n.as_str(),
                    _ => return Err(Error::bad("Invalid or missing user name")),
                };
                let ttl = ttl(body.get("ttl"))?;
                let s = auth.create_session(name, ttl, false).await?;
                Ok(json_reply(
                    200,
                    &json!({
                        "session_id": s.id,
                        "expires": rfc3339(s.record.expires()),
                        "cookie_name": auth.cookie().name,
                    }),
                ))
            }
            _ => Err(not_allowed(
                req,
                "_session (the admin port creates sessions with POST)",
            )),
        },
        [id] => match req.method {
            Method::GET | Method::HEAD => {
                let (_, user) = auth
                    .live_session(id)
                    .await?
                    .ok_or_else(|| Error::not_found("No such session"))?;
                Ok(json_reply(200, &routes::session_info(Some(&user))))
            }
            Method::DELETE => {
                if !auth.delete_session(id).await? {
                    return Err(Error::not_found("No such session"));
                }
                Ok(ok(200))
            }
            _ => Err(not_allowed(req, "a session")),
        },
        _ => Err(Error::not_found("unknown URL")),
    }
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out.escape_default().to_string()
}
