//! The public port: the client API. Every request is authenticated (Bearer → Basic → cookie →
//! GUEST) before it reaches a database; admin-only routes answer 404 `unknown URL`.

use std::sync::Arc;

use http::Method;
use serde_json::{json, Value};
use syncgate_api_common::reply::with_header;
use syncgate_api_common::{
    error_reply, json_reply, recover, request_filter, routes, Reply, Request,
};
use syncgate_auth::{Caller, Credentials, UserCtx};
use syncgate_core::{Database, Error, Result, Server};
use warp::filters::BoxedFilter;
use warp::Filter;

/// Routes reserved to the admin port (answered 404 here, as if they did not exist).
const ADMIN_ONLY: &[&str] = &[
    "_user", "_role", "_compact", "_config", "_resync", "_purge", "_offline", "_online", "_raw",
    "_dump",
];

/// The public port's filter.
pub fn routes(server: Arc<Server>) -> BoxedFilter<(Reply,)> {
    let max = server.config.max_body();
    request_filter(max)
        .then(move |req: Result<Request>| {
            let server = server.clone();
            async move {
                match req {
                    Ok(req) => handle(&server, &req).await,
                    Err(e) => error_reply(&e),
                }
            }
        })
        .recover(recover)
        .unify()
        .boxed()
}

async fn handle(server: &Arc<Server>, req: &Request) -> Reply {
    match dispatch(server, req).await {
        Ok(r) => r,
        Err(e) => {
            let db = req.segments.first().and_then(|d| server.db(d));
            error_with_challenge(&e, req, db.as_deref())
        }
    }
}

/// Adds `WWW-Authenticate` to a 401 only for clients that can show a native login prompt:
/// no `Origin` (every cross-origin browser/app request has one), no `X-Requested-With`, and
/// password auth enabled.
fn error_with_challenge(e: &Error, req: &Request, db: Option<&Database>) -> Reply {
    let r = error_reply(e);
    let challenge = matches!(
        e,
        Error::Unauthorized {
            challenge: true,
            ..
        }
    ) && req.header("origin").is_none()
        && req.header("x-requested-with").is_none()
        && !db.is_some_and(|d| d.config.disable_password_auth.unwrap_or(false));
    if challenge {
        with_header(r, "www-authenticate", "Basic realm=\"syncgate\"")
    } else {
        r
    }
}

async fn dispatch(server: &Arc<Server>, req: &Request) -> Result<Reply> {
    let segs = &req.segments;
    let Some(first) = segs.first() else {
        return match req.method {
            Method::GET | Method::HEAD => Ok(routes::root(false)),
            _ => Err(Error::MethodNotAllowed("Only GET is allowed on /".into())),
        };
    };
    if first == "_ping" && segs.len() == 1 {
        return Ok(routes::ping());
    }
    if first.starts_with('_') {
        return Err(Error::not_found("unknown URL"));
    }
    let rest = &segs[1..];
    if rest
        .first()
        .is_some_and(|s| ADMIN_ONLY.contains(&s.as_str()))
    {
        return Err(Error::not_found("unknown URL"));
    }
    let Some(db) = server.db(first) else {
        if rest.is_empty() && req.method == Method::PUT {
            return Err(Error::Forbidden(
                "Databases can only be created on the admin port".into(),
            ));
        }
        // as SG: no database enumeration for unauthenticated clients
        return Err(Error::unauthorized("Login required"));
    };
    if rest.is_empty() {
        match req.method {
            Method::PUT => {
                return Err(Error::PreconditionFailed(format!(
                    "The database \"{first}\" already exists"
                )))
            }
            Method::DELETE => return Err(Error::not_found("unknown URL")),
            _ => {}
        }
    }
    if rest.first().map(String::as_str) == Some("_session") && rest.len() == 1 {
        return session(&db, req).await;
    }
    let user = authenticate(&db, req).await?;
    routes::db_route(db, Caller::User(user), req, rest).await
}

/// The database's session cookie value on this request, if any.
fn session_cookie<'a>(db: &Database, req: &'a Request) -> Option<&'a str> {
    let name = db.config.cookie_name();
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn credentials<'a>(db: &Database, req: &'a Request) -> Credentials<'a> {
    Credentials {
        authorization: req.header("authorization"),
        session_cookie: session_cookie(db, req),
        client_addr: req.client_addr.map(|a| a.ip()),
    }
}

/// Runs the database's authentication pipeline for this request.
pub async fn authenticate(db: &Database, req: &Request) -> Result<UserCtx> {
    Ok(db.auth.authenticate(&credentials(db, req)).await?)
}

fn user_ctx_json(user: Option<&UserCtx>) -> Value {
    match user {
        Some(u) => json!({
            "name": u.name,
            "channels": u.channels.iter().map(|c| (c.clone(), json!(1))).collect::<serde_json::Map<_, _>>(),
            "roles": u.roles,
        }),
        None => json!({"name": Value::Null, "channels": {}, "roles": []}),
    }
}

/// `/{db}/_session`.
async fn session(db: &Arc<Database>, req: &Request) -> Result<Reply> {
    match req.method {
        Method::GET | Method::HEAD => {
            // a bad cookie is ignored here; anonymous callers get name null
            let user = authenticate(db, req).await.ok().or_else(|| db.auth.guest());
            Ok(json_reply(
                200,
                &json!({
                    "ok": true,
                    "authentication_handlers": ["default", "cookie"],
                    "userCtx": user_ctx_json(user.as_ref()),
                }),
            ))
        }
        _ => Err(Error::MethodNotAllowed(format!(
            "Method {} is not allowed on _session",
            req.method
        ))),
    }
}
