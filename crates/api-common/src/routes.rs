//! Document and replication routes served on both ports.

use std::sync::Arc;

use http::Method;
use serde_json::{json, Value};
use syncgate_auth::{Caller, UserCtx};
use syncgate_core::docs::{GetOptions, GetResult, OpenRev, OpenRevs, LOCAL_DELETED_REV};
use syncgate_core::find::FindRequest;
use syncgate_core::{Database, Error, Result};
use syncgate_storage::WriteOutcome;

use crate::reply::{bytes_reply, json_reply, with_header, Reply};
use crate::{feed, Request, VERSION};

/// `GET /` on either port.
pub fn root(admin: bool) -> Reply {
    let mut body = json!({
        "couchdb": "Welcome",
        "vendor": {"name": "syncgate", "version": VERSION},
        "version": format!("syncgate/{VERSION}"),
    });
    if admin {
        body["ADMIN"] = Value::Bool(true);
    }
    json_reply(200, &body)
}

/// The `GET /{db}/_session` body for a user (`None` = anonymous: name null, no channels).
pub fn session_info(user: Option<&UserCtx>) -> Value {
    let ctx = match user {
        Some(u) => json!({"name": u.name, "channels": &u.channels, "roles": u.roles}),
        None => json!({"name": Value::Null, "channels": {}, "roles": []}),
    };
    json!({
        "ok": true,
        "authentication_handlers": ["default", "cookie"],
        "userCtx": ctx,
    })
}

/// `GET /_ping`.
pub fn ping() -> Reply {
    bytes_reply(200, "text/plain; charset=utf-8", b"OK".to_vec())
}

fn method_not_allowed(req: &Request) -> Error {
    Error::MethodNotAllowed(format!("Method {} is not allowed on this URL", req.method))
}

/// Routes below `/{db}/` shared by both ports; `rest` is the path after the database name.
/// Port-specific routes (`_session`, `_user`, database create/delete, …) are matched by the
/// port before this.
pub async fn db_route(
    db: Arc<Database>,
    caller: Caller,
    req: &Request,
    rest: &[String],
) -> Result<Reply> {
    let m = &req.method;
    let first = rest.first().map(String::as_str);
    match first {
        None => match *m {
            Method::GET | Method::HEAD => Ok(json_reply(200, &db.info().await?)),
            Method::POST => {
                let o = db.post_doc(&caller, req.json_text()?).await?;
                let r = written(201, &o);
                Ok(with_header(r, "location", &o.id))
            }
            _ => Err(method_not_allowed(req)),
        },
        Some("_all_docs") => match *m {
            Method::GET | Method::HEAD | Method::POST => all_docs(&db, &caller, req).await,
            _ => Err(method_not_allowed(req)),
        },
        Some("_bulk_docs") if rest.len() == 1 => match *m {
            Method::POST => Ok(json_reply(
                201,
                &db.bulk_docs(&caller, req.json_text()?).await?,
            )),
            _ => Err(method_not_allowed(req)),
        },
        Some("_bulk_get") if rest.len() == 1 => match *m {
            Method::POST => {
                let opts = GetOptions {
                    revs: req.q_bool("revs")?,
                    attachments: req.q_bool("attachments")?,
                    latest: req.q_bool("latest")?,
                    ..Default::default()
                };
                let body = db.bulk_get(&caller, &req.json()?, &opts).await?;
                Ok(bytes_reply(200, "application/json", body))
            }
            _ => Err(method_not_allowed(req)),
        },
        Some("_revs_diff") if rest.len() == 1 => match *m {
            Method::POST => Ok(json_reply(200, &db.revs_diff(&caller, &req.json()?).await?)),
            _ => Err(method_not_allowed(req)),
        },
        Some("_changes") if rest.len() == 1 => match *m {
            Method::GET | Method::POST => feed::changes(db, caller, req).await,
            _ => Err(method_not_allowed(req)),
        },
        Some("_find") if rest.len() == 1 => match *m {
            Method::POST => {
                let q = FindRequest::parse(&req.json()?)?;
                Ok(bytes_reply(
                    200,
                    "application/json",
                    db.find(&caller, &q).await?,
                ))
            }
            _ => Err(method_not_allowed(req)),
        },
        Some("_ensure_full_commit") if rest.len() == 1 => match *m {
            Method::POST => Ok(json_reply(
                201,
                &json!({"ok": true, "instance_start_time": db.start_time().to_string()}),
            )),
            _ => Err(method_not_allowed(req)),
        },
        Some("_local") if rest.len() >= 2 => local(&db, req, &rest[1..].join("/")).await,
        Some("_design") if rest.len() >= 2 => {
            let id = format!("_design/{}", rest[1]);
            doc_or_attachment(&db, &caller, req, &id, &rest[2..]).await
        }
        Some(s) if s.starts_with('_') => Err(Error::not_found("unknown URL")),
        Some(id) => doc_or_attachment(&db, &caller, req, id, &rest[1..]).await,
    }
}

/// The `_rev` of a rendered document (its second member, right after `_id`).
fn rendered_rev(doc: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Rev {
        #[serde(rename = "_rev")]
        rev: Option<String>,
    }
    serde_json::from_slice::<Rev>(doc)
        .ok()
        .and_then(|r| r.rev)
        .unwrap_or_default()
}

fn written(status: u16, o: &WriteOutcome) -> Reply {
    let r = json_reply(status, &json!({"ok": true, "id": o.id, "rev": o.rev}));
    with_header(r, "etag", &format!("\"{}\"", o.rev))
}

async fn doc_or_attachment(
    db: &Database,
    caller: &Caller,
    req: &Request,
    id: &str,
    att: &[String],
) -> Result<Reply> {
    if !att.is_empty() {
        return attachment(db, caller, req, id, &att.join("/")).await;
    }
    match req.method {
        Method::GET | Method::HEAD => {
            let opts = get_options(req)?;
            match db.get_doc(caller, id, &opts).await? {
                GetResult::Doc(doc) => {
                    let rev = rendered_rev(&doc);
                    Ok(with_header(
                        bytes_reply(200, "application/json", doc),
                        "etag",
                        &format!("\"{rev}\""),
                    ))
                }
                GetResult::OpenRevs(rows) if accepts_only_multipart_mixed(req) => {
                    Ok(open_revs_multipart(rows))
                }
                GetResult::OpenRevs(rows) => {
                    let mut body = vec![b'['];
                    for (i, row) in rows.into_iter().enumerate() {
                        if i > 0 {
                            body.push(b',');
                        }
                        match row {
                            OpenRev::Ok(doc) => {
                                body.extend_from_slice(b"{\"ok\":");
                                body.extend_from_slice(&doc.json);
                                body.push(b'}');
                            }
                            OpenRev::Missing(rev) => {
                                body.extend_from_slice(
                                    &serde_json::to_vec(&json!({"missing": rev}))
                                        .unwrap_or_default(),
                                );
                            }
                        }
                    }
                    body.push(b']');
                    Ok(bytes_reply(200, "application/json", body))
                }
            }
        }
        Method::PUT => {
            let new_edits = !matches!(req.q("new_edits"), Some("false"));
            let o = db
                .put_doc(caller, id, &req.doc_text()?, req.rev_param()?, new_edits)
                .await?;
            Ok(written(201, &o))
        }
        Method::DELETE => {
            let o = db.delete_doc(caller, id, req.rev_param()?).await?;
            Ok(written(200, &o))
        }
        _ => Err(method_not_allowed(req)),
    }
}

/// True when `multipart/mixed` is the only media type the client accepts (CouchDB's own
/// replicator asks that way). PouchDB sends `Accept: application/json` and gets JSON; so does
/// any client accepting `*/*` or several types.
fn accepts_only_multipart_mixed(req: &Request) -> bool {
    let mut types = req
        .headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|t| !t.is_empty())
        .peekable();
    types.peek().is_some() && types.all(|t| t == "multipart/mixed")
}

/// `open_revs` as `multipart/mixed`: one `application/json` part per revision, and an
/// `application/json; error="true"` part `{"missing":rev}` for each missing one. Attachment
/// bodies, when requested, stay inline (base64) in the document part.
fn open_revs_multipart(rows: Vec<OpenRev>) -> Reply {
    let boundary = syncgate_core::docs::new_doc_id();
    let mut body = Vec::new();
    for row in rows {
        let (ct, part) = match row {
            OpenRev::Ok(doc) => ("application/json", doc.json),
            OpenRev::Missing(rev) => (
                "application/json; error=\"true\"",
                serde_json::to_vec(&json!({"missing": rev})).unwrap_or_default(),
            ),
        };
        body.extend_from_slice(format!("--{boundary}\r\nContent-Type: {ct}\r\n\r\n").as_bytes());
        body.extend_from_slice(&part);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    bytes_reply(
        200,
        &format!("multipart/mixed; boundary=\"{boundary}\""),
        body,
    )
}

fn string_list(v: Value, name: &str) -> Result<Vec<String>> {
    match v {
        Value::Array(a) => a
            .into_iter()
            .map(|x| match x {
                Value::String(s) => Ok(s),
                _ => Err(Error::bad(format!("'{name}' must be an array of strings"))),
            })
            .collect(),
        _ => Err(Error::bad(format!(
            "'{name}' must be a JSON array of strings"
        ))),
    }
}

/// Query options of a document GET.
pub fn get_options(req: &Request) -> Result<GetOptions> {
    let open_revs = match req.q("open_revs") {
        None => None,
        Some("all") => Some(OpenRevs::All),
        Some(_) => {
            let v = req.q_json("open_revs").map_err(|_| {
                Error::bad("bad open_revs: expected \"all\" or a JSON array of revisions")
            })?;
            Some(OpenRevs::List(
                string_list(v.unwrap_or(Value::Null), "open_revs").map_err(|_| {
                    Error::bad("bad open_revs: expected \"all\" or a JSON array of revisions")
                })?,
            ))
        }
    };
    let atts_since = match req.q_json("atts_since")? {
        None => None,
        Some(v) => Some(string_list(v, "atts_since")?),
    };
    Ok(GetOptions {
        rev: req.q("rev").map(str::to_string),
        revs: req.q_bool("revs")?,
        revs_info: req.q_bool("revs_info")?,
        conflicts: req.q_bool("conflicts")?,
        deleted_conflicts: req.q_bool("deleted_conflicts")?,
        latest: req.q_bool("latest")?,
        open_revs,
        attachments: req.q_bool("attachments")?,
        atts_since,
    })
}

async fn all_docs(db: &Database, caller: &Caller, req: &Request) -> Result<Reply> {
    let opts = crate::all_docs::options(req)?;
    let body = db.all_docs(caller, &opts).await?;
    Ok(bytes_reply(200, "application/json", body))
}

async fn attachment(
    db: &Database,
    caller: &Caller,
    req: &Request,
    id: &str,
    name: &str,
) -> Result<Reply> {
    match req.method {
        Method::GET | Method::HEAD => {
            let rev = req.q("rev");
            let (meta, data) = db.get_attachment(caller, id, name, rev).await?;
            let r = bytes_reply(200, &meta.content_type, data);
            Ok(with_header(r, "etag", &format!("\"{}\"", meta.digest)))
        }
        Method::PUT => {
            let ct = req
                .header("content-type")
                .unwrap_or("application/octet-stream")
                .to_string();
            let o = db
                .put_attachment(
                    caller,
                    id,
                    name,
                    req.rev_param()?,
                    ct,
                    req.attachment_body().to_vec(),
                )
                .await?;
            Ok(written(201, &o))
        }
        Method::DELETE => {
            let o = db
                .delete_attachment(caller, id, name, req.rev_param()?)
                .await?;
            Ok(written(200, &o))
        }
        _ => Err(method_not_allowed(req)),
    }
}

async fn local(db: &Database, req: &Request, id: &str) -> Result<Reply> {
    match req.method {
        Method::GET | Method::HEAD => Ok(bytes_reply(
            200,
            "application/json",
            db.get_local(id).await?,
        )),
        Method::PUT => {
            let rev = db.put_local(id, req.json_text()?).await?;
            Ok(json_reply(
                201,
                &json!({"ok": true, "id": format!("_local/{id}"), "rev": rev}),
            ))
        }
        Method::DELETE => {
            let rev = req.rev_param()?;
            db.delete_local(id, rev.as_deref()).await?;
            Ok(json_reply(
                200,
                &json!({"ok": true, "id": format!("_local/{id}"), "rev": LOCAL_DELETED_REV}),
            ))
        }
        _ => Err(method_not_allowed(req)),
    }
}
