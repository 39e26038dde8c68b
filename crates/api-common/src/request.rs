//! Turning an HTTP request into a [`Request`].

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
    pub body: Bytes,
    pub client_addr: Option<SocketAddr>,
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
    if let Some(len) = headers.get(http::header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Error::bad("Invalid Content-Length header"))?;
        if len > max {
            return Err(too_large());
        }
    }
    let mut buf = BytesMut::new();
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

    /// The body as JSON. A Content-Type other than JSON is a 415; bad JSON a 400.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(self.json_text()?)
            .map_err(|e| Error::bad(format!("Invalid JSON in the request body: {e}")))
    }

    /// The body's JSON text, unparsed (documents keep their text: numbers and member order),
    /// after the same Content-Type and emptiness checks as [`Request::json`].
    pub fn json_text(&self) -> Result<&[u8]> {
        if let Some(ct) = self.header("content-type") {
            let ct = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !(ct.is_empty()
                || ct == "application/json"
                || ct.ends_with("+json")
                || ct == "text/plain")
            {
                return Err(Error::BadContentType(format!(
                    "Content-Type must be application/json, not \"{}\"",
                    short(&ct)
                )));
            }
        }
        if self.body.is_empty() {
            return Err(Error::bad(
                "The request body is empty; a JSON object was expected",
            ));
        }
        Ok(&self.body)
    }

    /// The JSON body, or an empty object when there is none (optional POST bodies).
    pub fn json_or_empty(&self) -> Result<Value> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            Ok(Value::Object(Default::default()))
        } else {
            self.json()
        }
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
