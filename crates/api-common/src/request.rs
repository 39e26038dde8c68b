//! Turning an HTTP request into a [`Request`].

use std::borrow::Cow;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, Method};
use percent_encoding::percent_decode_str;
use serde_json::Value;
use syncgate_core::{Error, Result};
use warp::{Buf, Filter};

/// The client's address, inserted into request extensions by the connection layer.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// A request, decoded once.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// Percent-decoded path segments, without empty ones (`/db/` → `["db"]`).
    pub segments: Vec<String>,
    /// Decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    /// Private: routes read it through [`Request::json`] and its siblings, which check the
    /// Content-Type, or [`Request::attachment_body`].
    body: Bytes,
    pub client_addr: Option<SocketAddr>,
    /// The server's body limit (bounds decompressed multipart attachments too).
    max_body: u64,
}

/// The filter both ports start from. Malformed paths and oversized bodies become errors here,
/// answered as JSON by the port.
pub fn request_filter(
    max_body: u64,
) -> impl Filter<Extract = (Result<Request>,), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<ClientAddr>())
        .and(warp::body::stream())
        .then(
            move |method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: HeaderMap,
                  addr: Option<ClientAddr>,
                  body| async move {
                build(method, path.as_str(), &query, headers, addr, body, max_body).await
            },
        )
}

async fn build<S, B>(
    method: Method,
    path: &str,
    query: &str,
    headers: HeaderMap,
    addr: Option<ClientAddr>,
    body: S,
    max_body: u64,
) -> Result<Request>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let segments = decode_path(path)?;
    let query = parse_query(query)?;
    let body = read_body(&headers, body, max_body).await?;
    Ok(Request {
        method,
        segments,
        query,
        headers,
        body,
        client_addr: addr.map(|a| a.0),
        max_body,
    })
}

/// Splits and percent-decodes a path. Each segment is decoded once.
pub fn decode_path(path: &str) -> Result<Vec<String>> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| Error::bad("The URL path is not valid UTF-8 after percent-decoding"))
        })
        .collect()
}

/// Parses `a=1&b=2` (with `+` as space).
pub fn parse_query(q: &str) -> Result<Vec<(String, String)>> {
    let dec = |s: &str| -> Result<String> {
        let s = s.replace('+', " ");
        percent_decode_str(&s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| Error::bad("The query string is not valid UTF-8 after percent-decoding"))
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((dec(k)?, dec(v)?))
        })
        .collect()
}

async fn read_body<S, B>(headers: &HeaderMap, mut body: S, max: u64) -> Result<Bytes>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let too_large = || {
        Error::TooLarge(format!(
            "The request body is larger than the limit of {max} bytes"
        ))
    };
    let mut declared = 0;
    if let Some(len) = headers.get(http::header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Error::bad("Invalid Content-Length header"))?;
        if len > max {
            return Err(too_large());
        }
        declared = len;
    }
    // room for the declared length up front (a `_bulk_docs` of 100 KB grew by doubling,
    // copying each time), but not more than 1 MiB on a client's word alone
    let mut buf = BytesMut::with_capacity(declared.min(1 << 20) as usize);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| Error::bad("The request body could not be read"))?;
        if buf.len() as u64 + chunk.remaining() as u64 > max {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            buf.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

impl Request {
    /// The first value of a query parameter.
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean query parameter (`true`/`false`); anything else is a 400.
    pub fn q_bool(&self, name: &str) -> Result<bool> {
        match self.q(name) {
            None => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") | Some("") => Ok(false),
            Some(v) => Err(Error::bad(format!(
                "Query parameter '{name}' must be true or false, not \"{}\"",
                short(v)
            ))),
        }
    }

    /// A non-negative integer query parameter.
    pub fn q_u64(&self, name: &str) -> Result<Option<u64>> {
        match self.q(name) {
            None => Ok(None),
            Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                Error::bad(format!(
                    "Query parameter '{name}' must be a non-negative integer, not \"{}\"",
                    short(v)
                ))
            }),
        }
    }

    /// A JSON-valued query parameter (`keys=[...]`, `open_revs=[...]`, `startkey="a"`).
    pub fn q_json(&self, name: &str) -> Result<Option<Value>> {
        match self.q(name) {
            None => Ok(None),
            Some(v) => serde_json::from_str(v)
                .map(Some)
                .map_err(|_| Error::bad(format!("Query parameter '{name}' must be JSON"))),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Refuses (415) a request whose Content-Type is not `application/json` (parameters such
    /// as `charset=utf-8` allowed, any case) or that has none. Every route that reads a JSON
    /// body goes through this (via [`Request::json`] and friends): a browser sends `text/plain`
    /// and body-without-type requests cross-site without a CORS preflight, so accepting them
    /// as JSON would let any page write with a user's cookie.
    pub fn require_json_type(&self) -> Result<()> {
        let mut cts = self.headers.get_all(http::header::CONTENT_TYPE).iter();
        let (Some(ct), None) = (cts.next(), cts.next()) else {
            return Err(Error::BadContentType(
                if self.headers.contains_key(http::header::CONTENT_TYPE) {
                    "Send exactly one Content-Type header: application/json".into()
                } else {
                    "Content-Type must be application/json (the request has none)".into()
                },
            ));
        };
        let ct = ct.to_str().unwrap_or("");
        let mt = crate::multipart::media_type(ct);
        if mt != "application/json" {
            return Err(Error::BadContentType(format!(
                "Content-Type must be application/json, not \"{}\"",
                short(&mt)
            )));
        }
        Ok(())
    }

    /// The JSON text of a required body: the Content-Type must be JSON (else 415) and the
    /// body non-empty (else 400).
    pub fn json_text(&self) -> Result<&[u8]> {
        self.require_json_type()?;
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::bad(
                "The request body is empty; a JSON object was expected",
            ));
        }
        Ok(&self.body)
    }

    /// The body as JSON. A Content-Type other than JSON (or none) is a 415; bad JSON a 400.
    pub fn json(&self) -> Result<Value> {
        parse_json(self.json_text()?)
    }

    /// The JSON body of a route whose body is optional (POST `_changes`, `_all_docs`): the
    /// Content-Type must still be JSON, as CouchDB; an empty body is an empty object.
    pub fn json_or_empty(&self) -> Result<Value> {
        self.require_json_type()?;
        if self.body.iter().all(u8::is_ascii_whitespace) {
            Ok(Value::Object(Default::default()))
        } else {
            parse_json(&self.body)
        }
    }

    /// Like [`Request::json_or_empty`], but a request with no body at all and no
    /// Content-Type is an empty object too (public `POST /_session` from an already
    /// authenticated caller, e.g. `curl -X POST -u name:pw`). Any body, or any Content-Type,
    /// must be JSON.
    pub fn json_if_any(&self) -> Result<Value> {
        if self.body.is_empty() && !self.headers.contains_key(http::header::CONTENT_TYPE) {
            return Ok(Value::Object(Default::default()));
        }
        self.json_or_empty()
    }

    /// The JSON text of a document `PUT`: an `application/json` body, or a `multipart/related`
    /// one (CouchDB's replicator uploading attachments) turned into the same document with
    /// its attachments inline.
    pub fn doc_text(&self) -> Result<Cow<'_, [u8]>> {
        let ct = self.header("content-type").unwrap_or("");
        if crate::multipart::media_type(ct) == "multipart/related"
            && self
                .headers
                .get_all(http::header::CONTENT_TYPE)
                .iter()
                .count()
                == 1
        {
            let text = crate::multipart::inline_document(&self.body, ct, self.max_body)?;
            return Ok(Cow::Owned(text));
        }
        self.json_text().map(Cow::Borrowed)
    }

    /// The JavaScript text of a body (`PUT _config/sync`): the Content-Type must be
    /// `application/javascript` or `text/javascript` (else 415: neither is one a browser
    /// sends cross-site without a preflight) and the body UTF-8 (else 400). May be empty.
    pub fn javascript_text(&self) -> Result<&str> {
        let mut cts = self.headers.get_all(http::header::CONTENT_TYPE).iter();
        let mt = match (cts.next(), cts.next()) {
            (Some(ct), None) => crate::multipart::media_type(ct.to_str().unwrap_or("")),
            _ => String::new(),
        };
        if mt != "application/javascript" && mt != "text/javascript" {
            return Err(Error::BadContentType(format!(
                "Content-Type must be application/javascript or text/javascript, not \"{}\"",
                short(&mt)
            )));
        }
        std::str::from_utf8(&self.body)
            .map_err(|_| Error::bad("The JavaScript source is not valid UTF-8"))
    }

    /// The raw body, whatever its Content-Type: only for attachment uploads, whose bytes are
    /// stored as sent with the type they say.
    pub fn attachment_body(&self) -> &Bytes {
        &self.body
    }

    /// Revision from `?rev=` or `If-Match`.
    pub fn rev_param(&self) -> Result<Option<String>> {
        let q = self.q("rev").map(str::to_string);
        let h = self
            .header("if-match")
            .map(|h| h.trim().trim_matches('"').to_string());
        match (q, h) {
            (Some(a), Some(b)) if a != b => Err(Error::bad("Revision IDs provided do not match")),
            (a, b) => Ok(a.or(b)),
        }
    }
}

/// Parses JSON text (400 on bad JSON).
pub fn parse_json(text: &[u8]) -> Result<Value> {
    serde_json::from_slice(text)
        .map_err(|e| Error::bad(format!("Invalid JSON in the request body: {e}")))
}

pub(crate) fn short(s: &str) -> String {
    syncgate_storage::revtree_truncate(s, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_decode_once() {
        assert_eq!(decode_path("/db/a%2Fb").unwrap(), vec!["db", "a/b"]);
        assert_eq!(decode_path("/db/a%252F").unwrap(), vec!["db", "a%2F"]);
        assert_eq!(decode_path("/db/").unwrap(), vec!["db"]);
        assert!(decode_path("/db/%FF").is_err());
    }

    #[test]
    fn query_pairs() {
        let q = parse_query("a=1&b=x+y&c=%22z%22&d").unwrap();
        assert_eq!(
            q,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "\"z\"".into()),
                ("d".into(), "".into())
            ]
        );
    }
}
