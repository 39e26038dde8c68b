//! The public port: the client API. Every request is authenticated (Bearer → Basic → cookie →
//! GUEST) before it reaches a database; admin-only routes answer 404 `unknown URL`.

use std::sync::Arc;

use http::{HeaderValue, Method};
use serde_json::{json, Value};
use syncgate_api_common::cors::{self, CorsPolicy};
use syncgate_api_common::reply::with_header;
use syncgate_api_common::{
    error_reply, json_reply, recover, request_filter, routes, Reply, Request,
};
use syncgate_auth::{AuthError, Authenticated, Caller, Credentials};
use syncgate_core::{Database, Error, Result, Server};
use warp::filters::BoxedFilter;
use warp::Filter;

mod oidc;

/// Routes reserved to the admin port (answered 404 here, as if they did not exist).
const ADMIN_ONLY: &[&str] = &[
    "_user", "_role", "_compact", "_config", "_resync", "_sync", "_purge", "_offline", "_online",
    "_raw", "_dump",
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

/// What a handler adds to whatever response the request ends with (success or error).
#[derive(Default)]
struct Pending {
    /// A session cookie to set: login, logout, or the sliding refresh of the request's session.
    set_cookie: Option<String>,
    /// Other cookies (the OpenID Connect login binding).
    extra_cookies: Vec<String>,
}

async fn handle(server: &Arc<Server>, req: &Request) -> Reply {
    let db = req.segments.first().and_then(|d| server.db(d));
    let policy = cors::policy(server, db.as_deref());
    if req.method == Method::OPTIONS {
        return cors::preflight(&req.headers, policy);
    }
    let mut pending = Pending::default();
    let mut r = match dispatch(server, req, policy, &mut pending).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(db) = &db {
                count_auth_failure(db, req, &e);
            }
            error_with_challenge(&e, req, db.as_deref())
        }
    };
    for c in pending
        .extra_cookies
        .iter()
        .chain(pending.set_cookie.as_ref())
        .filter_map(|c| HeaderValue::from_str(c).ok())
    {
        r.headers_mut().append(http::header::SET_COOKIE, c);
    }
    cors::apply(&mut r, &req.headers, policy);
    r
}

/// Counts a refused authentication by the kind of credential the request carried.
fn count_auth_failure(db: &Database, req: &Request, e: &Error) {
    use syncgate_core::database::AuthFailure;
    let why = match e {
        Error::TooManyRequests { .. } => AuthFailure::Throttled,
        Error::Unauthorized { .. } => {
            let auth = req.header("authorization").unwrap_or("");
            if auth.len() > 7 && auth[..7].eq_ignore_ascii_case("bearer ") {
                AuthFailure::Token
            } else if !auth.is_empty() || req.segments.get(1).is_some_and(|s| s == "_session") {
                AuthFailure::Password
            } else if req.header("cookie").is_some() {
                AuthFailure::Session
            } else {
                AuthFailure::NoCredentials
            }
        }
        _ => return,
    };
    db.metrics().auth_failed(why);
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
        && !db.is_some_and(|d| d.config().disable_password_auth.unwrap_or(false));
    if challenge {
        with_header(r, "www-authenticate", "Basic realm=\"syncgate\"")
    } else {
        r
    }
}

async fn dispatch(
    server: &Arc<Server>,
    req: &Request,
    policy: Option<CorsPolicy<'_>>,
    pending: &mut Pending,
) -> Result<Reply> {
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
        return Err(if req.header("authorization").is_some() {
            Error::unauthorized("Invalid login")
        } else {
            Error::unauthorized("Login required")
        });
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
    if let (Some(ep), 1) = (rest.first(), rest.len()) {
        if oidc::ENDPOINTS.contains(&ep.as_str()) {
            // no authentication: these endpoints are how a caller logs in
            return oidc::handle(&db, req, ep, pending).await;
        }
    }
    if rest.first().map(String::as_str) == Some("_session") && rest.len() == 1 {
        return session(&db, req, policy, pending).await;
    }
    let auth = authenticate(&db, req).await?;
    pending.set_cookie = auth.set_cookie;
    routes::db_route(db, Caller::User(auth.user), req, rest).await
}

/// The database's session cookie value on this request, if any.
fn session_cookie<'a>(db: &Database, req: &'a Request) -> Option<&'a str> {
    let name = db.config().cookie_name();
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
pub async fn authenticate(db: &Database, req: &Request) -> Result<Authenticated> {
    Ok(db.auth().authenticate(&credentials(db, req)).await?)
}

/// `POST /{db}/_session` body: `{"name","password"}`, both optional, nothing else.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    name: Option<String>,
    password: Option<String>,
}

fn login_body(req: &Request) -> Result<LoginBody> {
    let v = req.json_if_any()?;
    let Value::Object(mut m) = v else {
        return Err(Error::bad("The _session body must be a JSON object"));
    };
    // checked by hand so that no error message can echo a password
    let password = match m.remove("password") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(p),
        Some(_) => return Err(Error::bad("'password' must be a string")),
    };
    let mut body: LoginBody = serde_json::from_value(Value::Object(m)).map_err(|e| {
        let msg = e.to_string();
        Error::bad(format!(
            "Invalid _session body: {}",
            msg.split(" at line ").next().unwrap_or(&msg)
        ))
    })?;
    body.password = password;
    Ok(body)
}

fn no_cors() -> Error {
    Error::bad("No CORS: this Origin is not allowed to log in (see login_origin)")
}

/// `/{db}/_session`: who am I, login, logout.
async fn session(
    db: &Arc<Database>,
    req: &Request,
    policy: Option<CorsPolicy<'_>>,
    pending: &mut Pending,
) -> Result<Reply> {
    let creds = credentials(db, req);
    match req.method {
        Method::GET | Method::HEAD => {
            // a bad cookie is ignored here; anonymous callers get name null
            let a = db.auth().authenticate_optional(&creds).await?;
            let user = a.map(|a| {
                pending.set_cookie = a.set_cookie;
                a.user
            });
            Ok(json_reply(200, &routes::session_info(user.as_ref())))
        }
        Method::POST => {
            if !cors::login_allowed(&req.headers, policy) {
                return Err(no_cors());
            }
            let one_time = req.q_bool("one_time")?;
            let body = login_body(req)?;
            let name = match body.name {
                Some(name) => {
                    if db.auth().settings().disable_password_auth {
                        return Err(Error::Unauthorized {
                            reason: "Password authentication is disabled for this database".into(),
                            challenge: false,
                        });
                    }
                    let password = body.password.unwrap_or_default();
                    let user = db
                        .auth()
                        .check_password(&name, &password, creds.client_addr)
                        .await
                        .map_err(no_challenge)?;
                    user.record.name.clone()
                }
                None => {
                    let a = db.auth().authenticate_optional(&creds).await?;
                    match a.and_then(|a| a.user.name) {
                        Some(n) => n,
                        None => {
                            return Err(Error::Unauthorized {
                                reason: "Login required: send a name and password".into(),
                                challenge: false,
                            })
                        }
                    }
                }
            };
            let s = db
                .auth()
                .create_session(&name, None, one_time)
                .await
                .map_err(|e| match e {
                    AuthError::BadRequest(_) | AuthError::NotFound(_) => Error::Unauthorized {
                        reason: "Invalid login".into(),
                        challenge: false,
                    },
                    e => e.into(),
                })?;
            let user = db
                .auth()
                .principals()
                .load(&name)
                .await?
                .map(|u| u.ctx.clone());
            let mut body = routes::session_info(user.as_ref());
            if one_time {
                body["one_time_session_id"] = json!(s.id);
            }
            pending.set_cookie = s.set_cookie;
            Ok(json_reply(200, &body))
        }
        Method::DELETE => {
            if !cors::login_allowed(&req.headers, policy) {
                return Err(no_cors());
            }
            // a bad cookie is a 401 here (the caller must be logged in)
            db.auth().authenticate(&creds).await?;
            let Some(id) = creds.session_cookie else {
                return Err(Error::not_found("no session"));
            };
            db.auth().delete_session(id).await?;
            pending.set_cookie = Some(db.auth().cookie().clear_cookie());
            Ok(json_reply(200, &json!({"ok": true})))
        }
        _ => Err(Error::MethodNotAllowed(format!(
            "Method {} is not allowed on _session",
            req.method
        ))),
    }
}

/// A failed login on `POST /_session` never offers a Basic challenge (the client is already
/// using a login form).
fn no_challenge(e: AuthError) -> Error {
    match e {
        AuthError::Unauthorized { reason, .. } => Error::Unauthorized {
            reason,
            challenge: false,
        },
        e => e.into(),
    }
}
