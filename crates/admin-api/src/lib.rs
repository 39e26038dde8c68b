//! The admin port: everything the public port serves, without user authentication, plus
//! database management, users, roles and sessions. Bind it to loopback.
//!
//! - `/{db}/_user/…`, `/{db}/_role/…`, `/{db}/_session…`: [`principals`].
//! - `/_console/…`: the admin console's static files ([`console`]).
//! - `GET /_metrics`: the metrics listener's Prometheus text, for the console.
//! - `GET /_all_dbs?verbose=true`: every database's info and backend in one call.
//! - `/{db}/_config/sync`, `/{db}/_sync`, `/{db}/_resync`: the sync function ([`sync_fn`]).
//!
//! On loopback it answers only requests addressed to a loopback name ([`host`]).

mod console;
mod host;
mod principals;
mod sessions;
mod sync_fn;

use std::sync::Arc;

use http::Method;
use serde_json::{json, Value};
use syncgate_api_common::cors;
use syncgate_api_common::reply::bytes_reply;
use syncgate_api_common::{
    error_reply, json_reply, recover, request_filter, routes, Reply, Request,
};
use syncgate_auth::Caller;
use syncgate_core::{Error, Result, Server};
use warp::filters::BoxedFilter;
use warp::Filter;

/// Renders the server's Prometheus text (the binary owns the HTTP metrics, so it hands the
/// admin port a way to render them).
pub type MetricsText = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> + Send + Sync,
>;

/// The admin port's filter.
pub fn routes(server: Arc<Server>, metrics: MetricsText) -> BoxedFilter<(Reply,)> {
    let max = server.config.max_body();
    request_filter(max)
        .then(move |req: Result<Request>| {
            let server = server.clone();
            let metrics = metrics.clone();
            async move {
                let mut r = match req {
                    Ok(req) => handle(&server, &metrics, &req).await,
                    Err(e) => error_reply(&e),
                };
                console::harden(&mut r);
                r
            }
        })
        .recover(recover)
        .unify()
        .boxed()
}

async fn handle(server: &Arc<Server>, metrics: &MetricsText, req: &Request) -> Reply {
    if let Err(e) = host::check(server, req.header("host")) {
        return error_reply(&e);
    }
    // the console is same-origin only: no CORS headers, no preflight answers
    if req.segments.first().map(String::as_str) == Some(console::PREFIX) {
        return console::serve(req);
    }
    let db = req.segments.first().and_then(|d| server.db(d));
    let policy = cors::policy(server, db.as_deref());
    if req.method == Method::OPTIONS {
        return cors::preflight(&req.headers, policy);
    }
    let mut r = dispatch(server, metrics, req)
        .await
        .unwrap_or_else(|e| error_reply(&e));
    cors::apply(&mut r, &req.headers, policy);
    r
}

async fn dispatch(server: &Arc<Server>, metrics: &MetricsText, req: &Request) -> Result<Reply> {
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
                Method::GET | Method::HEAD => all_dbs(server, req).await,
                _ => Err(Error::MethodNotAllowed(
                    "Only GET is allowed on /_all_dbs".into(),
                )),
            }
        }
        ("_metrics", 1) => {
            return match req.method {
                Method::GET | Method::HEAD => Ok(bytes_reply(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics().await.into_bytes(),
                )),
                _ => Err(Error::MethodNotAllowed(
                    "Only GET is allowed on /_metrics".into(),
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
                server.create_db(first).await?;
                return Ok(json_reply(201, &json!({"ok": true})));
            }
            Method::DELETE => {
                server.delete_db(first).await?;
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
        Some("_config") if rest.len() == 2 && rest[1] == "sync" => {
            sync_fn::config_sync(&db, req).await
        }
        Some("_sync") if rest.len() == 1 => sync_fn::dry_run(&db, req).await,
        Some("_resync") if rest.len() == 1 => sync_fn::resync(&db, req),
        Some("_user") => principals::user_routes(&db, req, &rest[1..]).await,
        Some("_role") => principals::role_routes(&db, req, &rest[1..]).await,
        Some("_session") => principals::session_routes(&db, req, &rest[1..]).await,
        _ => routes::db_route(db, Caller::Admin, req, rest).await,
    }
}

/// The storage backend of every database: the embedded sled store (the only one so far).
const BACKEND: &str = "embedded";

/// `GET /_all_dbs`: the names; with `verbose=true` (as Sync Gateway), one object per database
/// with its `GET /{db}/` info and `backend`.
async fn all_dbs(server: &Server, req: &Request) -> Result<Reply> {
    if !req.q_bool("verbose")? {
        return Ok(json_reply(200, &json!(server.db_names())));
    }
    let mut dbs = server.databases();
    dbs.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    for db in dbs {
        let mut info = db.info().await?;
        info["backend"] = json!(BACKEND);
        out.push(info);
    }
    Ok(json_reply(200, &Value::Array(out)))
}
