//! The admin port: everything the public port serves, without user authentication, plus
//! database management, users, roles and sessions. Bind it to loopback.
//!
//! - `/{db}/_user/…`, `/{db}/_role/…`, `/{db}/_session…`: [`principals`].

mod principals;

use std::sync::Arc;

use http::Method;
use serde_json::json;
use syncgate_api_common::cors;
use syncgate_api_common::{
    error_reply, json_reply, recover, request_filter, routes, Reply, Request,
};
use syncgate_auth::Caller;
use syncgate_core::{Error, Result, Server};
use warp::filters::BoxedFilter;
use warp::Filter;

/// The admin port's filter.
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
    let db = req.segments.first().and_then(|d| server.db(d));
    let policy = cors::policy(server, db.as_deref());
    if req.method == Method::OPTIONS {
        return cors::preflight(&req.headers, policy);
    }
    let mut r = dispatch(server, req)
        .await
        .unwrap_or_else(|e| error_reply(&e));
    cors::apply(&mut r, &req.headers, policy);
    r
}

async fn dispatch(server: &Arc<Server>, req: &Request) -> Result<Reply> {
    let segs = &req.segments;
    let Some(first) = segs.first() else {
        return match req.method {
            Method::GET | Method::HEAD => Ok(routes::root(true)),
            _ => Err(Error::MethodNotAllowed("Only GET is allowed on /".into())),
        };
    };
    match (first.as_str(), segs.len()) {
        ("_ping", 1) => return Ok(routes::ping()),
        ("_all_dbs", 1) => {
            return match req.method {
                Method::GET | Method::HEAD => Ok(json_reply(200, &json!(server.db_names()))),
                _ => Err(Error::MethodNotAllowed(
                    "Only GET is allowed on /_all_dbs".into(),
                )),
            }
        }
        (s, _) if s.starts_with('_') => return Err(Error::not_found("unknown URL")),
        _ => {}
    }
    let rest = &segs[1..];
    if rest.is_empty() {
        match req.method {
            Method::PUT => {
                server.create_db(first)?;
                return Ok(json_reply(201, &json!({"ok": true})));
            }
            Method::DELETE => {
                server.delete_db(first)?;
                return Ok(json_reply(200, &json!({"ok": true})));
            }
            _ => {}
        }
    }
    let db = server
        .db(first)
        .ok_or_else(|| Error::not_found(format!("no such database \"{first}\"")))?;
    match rest.first().map(String::as_str) {
        Some("_compact") if rest.len() == 1 => match req.method {
            Method::POST => {
                db.compact().await?;
                Ok(json_reply(202, &json!({"ok": true})))
            }
            _ => Err(Error::MethodNotAllowed(
                "Only POST is allowed on _compact".into(),
            )),
        },
        Some("_user") => principals::user_routes(&db, req, &rest[1..]).await,
        Some("_role") => principals::role_routes(&db, req, &rest[1..]).await,
        Some("_session") => principals::session_routes(&db, req, &rest[1..]).await,
        _ => routes::db_route(db, Caller::Admin, req, rest).await,
    }
}
