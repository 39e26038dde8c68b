//! `_all_docs` parameters: CouchDB's, each decided explicitly. A parameter that could change the
//! answer and is not supported is a 400 naming it, never silently ignored.
//!
//! | parameter | here |
//! |---|---|
//! | `key` | the one row of that id (a range from it to it: on the public port a document outside the caller's channels is simply absent); a `startkey`/`endkey` beside it replaces that bound |
//! | `keys` | rows in the given order (reversed with `descending`, as CouchDB); with `key`, `startkey`, `endkey` or their aliases → 400 as CouchDB |
//! | `startkey`/`start_key`, `endkey`/`end_key` | range bounds (JSON strings; a bare string is taken as is) |
//! | `startkey_docid`/`start_key_doc_id`, `endkey_docid`/`end_key_doc_id` | bounds when no `startkey`/`endkey`/`key` gives one (CouchDB: for `_all_docs` the key is the id) |
//! | `inclusive_end`, `limit`, `skip`, `descending`, `include_docs`, `conflicts`, `attachments`, `update_seq` | supported |
//! | `stable`, `stale`, `update` | accepted (validated): there is no index that could be stale or need updating |
//! | `att_encoding_info` | accepted: attachments are stored unencoded, so there is no encoding to report |
//! | `sorted` | accepted: rows always come sorted, which `sorted=false` allows |
//! | `reduce`, `group` | only `false` (there is nothing to reduce) |
//! | anything else (`group_level`, `channels`, `revs`, …) | 400 naming it |
//!
//! On `POST` the body may carry `keys` and any of these too; the query string wins when both
//! give one.

use serde_json::{Map, Value};
use syncgate_core::docs::AllDocsOptions;
use syncgate_core::{Error, Result};

use crate::request::short;
use crate::Request;

const SUPPORTED: &[&str] = &[
    "key",
    "keys",
    "startkey",
    "start_key",
    "endkey",
    "end_key",
    "startkey_docid",
    "start_key_doc_id",
    "endkey_docid",
    "end_key_doc_id",
    "inclusive_end",
    "limit",
    "skip",
    "descending",
    "include_docs",
    "conflicts",
    "attachments",
    "update_seq",
    "stable",
    "stale",
    "update",
    "att_encoding_info",
    "sorted",
    "reduce",
    "group",
];

/// A parameter's value: query text, or JSON from a POST body.
enum Param<'a> {
    Query(&'a str),
    Body(&'a Value),
}

struct Params<'a> {
    req: &'a Request,
    body: Map<String, Value>,
}

impl<'a> Params<'a> {
    fn get(&'a self, name: &str) -> Option<Param<'a>> {
        match self.req.q(name) {
            Some(q) => Some(Param::Query(q)),
            None => self.body.get(name).map(Param::Body),
        }
    }

    fn bool(&self, name: &str) -> Result<bool> {
        let bad = |v: &str| {
            Error::bad(format!(
                "Query parameter '{name}' must be true or false, not \"{}\"",
                short(v)
            ))
        };
        match self.get(name) {
            None => Ok(false),
            Some(Param::Query("true" | "1")) => Ok(true),
            Some(Param::Query("false" | "0" | "")) => Ok(false),
            Some(Param::Query(v)) => Err(bad(v)),
            Some(Param::Body(Value::Bool(b))) => Ok(*b),
            Some(Param::Body(v)) => Err(bad(&v.to_string())),
        }
    }

    fn u64(&self, name: &str) -> Result<Option<u64>> {
        let bad = |v: &str| {
            Error::bad(format!(
                "Query parameter '{name}' must be a non-negative integer, not \"{}\"",
                short(v)
            ))
        };
        match self.get(name) {
            None => Ok(None),
            Some(Param::Query(v)) => v.trim().parse().map(Some).map_err(|_| bad(v)),
            Some(Param::Body(v)) => v.as_u64().map(Some).ok_or_else(|| bad(&v.to_string())),
        }
    }

    /// A document-id key: a JSON string, or (in the query) leniently a bare string.
    fn key(&self, name: &str) -> Result<Option<String>> {
        let not_string = || Error::bad(format!("'{name}' must be a JSON string (a document id)"));
        match self.get(name) {
            None => Ok(None),
            Some(Param::Query(raw)) => match serde_json::from_str::<Value>(raw) {
                Ok(Value::String(s)) => Ok(Some(s)),
                Ok(_) => Err(not_string()),
                Err(_) => Ok(Some(raw.to_string())),
            },
            Some(Param::Body(Value::String(s))) => Ok(Some(s.clone())),
            Some(Param::Body(_)) => Err(not_string()),
        }
    }

    /// The first of `names` that is given, with its name.
    fn first_key(&self, names: &[&'static str]) -> Result<Option<(&'static str, String)>> {
        for n in names {
            if let Some(k) = self.key(n)? {
                return Ok(Some((n, k)));
            }
        }
        Ok(None)
    }

    fn keys(&self) -> Result<Option<Vec<String>>> {
        let v = match self.get("keys") {
            None => return Ok(None),
            Some(Param::Query(raw)) => serde_json::from_str::<Value>(raw)
                .map_err(|_| Error::bad("'keys' must be a JSON array of strings"))?,
            Some(Param::Body(v)) => v.clone(),
        };
        match v {
            Value::Array(a) => a
                .into_iter()
                .map(|x| match x {
                    Value::String(s) => Ok(s),
                    _ => Err(Error::bad("'keys' must be an array of strings")),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            _ => Err(Error::bad("'keys' must be a JSON array of strings")),
        }
    }

    /// A parameter that only accepts some text values (`stale`, `update`).
    fn one_of(&self, name: &str, allowed: &[&str]) -> Result<()> {
        let text = match self.get(name) {
            None => return Ok(()),
            Some(Param::Query(q)) => q.to_string(),
            Some(Param::Body(Value::String(s))) => s.clone(),
            Some(Param::Body(v)) => v.to_string(),
        };
        if allowed.contains(&text.as_str()) {
            return Ok(());
        }
        Err(Error::bad(format!(
            "Query parameter '{name}' must be one of {}, not \"{}\"",
            allowed.join(", "),
            short(&text)
        )))
    }
}

/// Reads and checks the options of a `GET|POST /{db}/_all_docs`.
pub fn options(req: &Request) -> Result<AllDocsOptions> {
    let body = if req.method == http::Method::POST {
        match req.json_or_empty()? {
            Value::Object(m) => m,
            _ => return Err(Error::bad("_all_docs body must be a JSON object")),
        }
    } else {
        Map::new()
    };
    let unknown: Vec<&str> = req
        .query
        .iter()
        .map(|(k, _)| k.as_str())
        .chain(body.keys().map(String::as_str))
        .filter(|k| !SUPPORTED.contains(k))
        .collect();
    if let Some(first) = unknown.first() {
        return Err(Error::bad(format!(
            "_all_docs does not support the parameter '{}'",
            short(first)
        )));
    }
    let p = Params { req, body };
    for name in ["stable", "att_encoding_info", "sorted"] {
        p.bool(name)?;
    }
    for name in ["reduce", "group"] {
        if p.bool(name)? {
            return Err(Error::bad(format!(
                "'{name}=true' is not supported by _all_docs: it has no reduce function"
            )));
        }
    }
    p.one_of("stale", &["ok", "update_after", "false"])?;
    p.one_of("update", &["true", "false", "lazy"])?;

    let descending = p.bool("descending")?;
    let inclusive_end = match p.get("inclusive_end") {
        None => true,
        Some(_) => p.bool("inclusive_end")?,
    };
    let key = p.key("key")?;
    let start = p.first_key(&["startkey", "start_key"])?;
    let end = p.first_key(&["endkey", "end_key"])?;
    let start_id = p.first_key(&["startkey_docid", "start_key_doc_id"])?;
    let end_id = p.first_key(&["endkey_docid", "end_key_doc_id"])?;
    let mut keys = p.keys()?;
    if keys.is_some() {
        if key.is_some() || start.is_some() || end.is_some() {
            return Err(Error::bad(
                "`keys` is incompatible with `key`, `start_key` and `end_key`",
            ));
        }
        if let Some((name, _)) = start_id.as_ref().or(end_id.as_ref()) {
            return Err(Error::bad(format!("`keys` is incompatible with `{name}`")));
        }
    }
    if descending {
        // CouchDB: rows for `keys` come in the reverse of the given order
        if let Some(k) = keys.as_mut() {
            k.reverse();
        }
    }
    // `key` is the range from it to it; a `startkey`/`endkey` beside it replaces that bound
    // (what CouchDB does with the order PouchDB sends them in)
    let start = start
        .map(|(_, k)| k)
        .or(key.clone())
        .or(start_id.map(|(_, k)| k));
    let end = end.map(|(_, k)| k).or(key).or(end_id.map(|(_, k)| k));
    Ok(AllDocsOptions {
        keys,
        include_docs: p.bool("include_docs")?,
        conflicts: p.bool("conflicts")?,
        start,
        end,
        inclusive_end,
        limit: p.u64("limit")?.map(|l| l as usize),
        skip: p.u64("skip")?.unwrap_or(0) as usize,
        descending,
        update_seq: p.bool("update_seq")?,
        attachments: p.bool("attachments")?,
    })
}
