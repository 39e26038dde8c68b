//! `multipart/related` document uploads, as CouchDB's replicator sends a document with
//! attachments: a first `application/json` part holding the document, whose `_attachments`
//! entries that carry `"follows":true` are each followed by one part with the attachment's
//! bytes, in the order of those entries.
//!
//! [`inline_document`] turns such a body into the document's JSON text with every following
//! attachment inlined as base64 `data`, so the upload is exactly the same write as the inline
//! form. Every other member keeps its JSON text as sent (numbers, member order).

use std::io::Read;

use base64::Engine;
use serde_json::value::RawValue;
use serde_json::Value;
use syncgate_core::{Error, Result};
use syncgate_storage::json::{push_key, RawMembers};

/// One part: its headers (names lower-cased) and its bytes.
#[derive(Debug)]
pub struct Part<'a> {
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

impl Part<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The media type of a Content-Type value, lower-cased, without parameters.
pub fn media_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The `boundary` parameter of a `multipart/*` Content-Type (quoted or not).
pub fn boundary(ct: &str) -> Result<String> {
    let mut rest = match ct.find(';') {
        Some(i) => &ct[i + 1..],
        None => "",
    };
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            break;
        }
        let eq = rest.find('=').unwrap_or(rest.len());
        let name = rest[..eq].trim().to_ascii_lowercase();
        rest = rest.get(eq + 1..).unwrap_or("").trim_start();
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            // quoted-string with backslash escapes
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            let end =
                end.ok_or_else(|| Error::bad("Unterminated quoted parameter in Content-Type"))?;
            value = v;
            rest = &q[end..];
        } else {
            let semi = rest.find(';').unwrap_or(rest.len());
            value = rest[..semi].trim().to_string();
            rest = &rest[semi..];
        }
        if name == "boundary" {
            if value.is_empty() || value.len() > 200 {
                return Err(Error::bad(
                    "The multipart boundary must be 1 to 200 characters long",
                ));
            }
            return Ok(value);
        }
    }
    Err(Error::bad(
        "multipart/related Content-Type without a boundary parameter",
    ))
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() || from > hay.len() - needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = from;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// Splits a multipart body into its parts. Delimiter lines are `--boundary` preceded by CRLF
/// (or at the very start of the body); the last one is `--boundary--`. A preamble before the
/// first delimiter and an epilogue after the last are ignored, as RFC 2046 says.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>> {
    let bad = |what: &str| Error::bad(format!("Malformed multipart body: {what}"));
    let dash = format!("--{boundary}");
    let delim = format!("\r\n--{boundary}");
    // first delimiter
    let mut pos = if body.starts_with(dash.as_bytes()) {
        dash.len()
    } else {
        find(body, delim.as_bytes(), 0).ok_or_else(|| bad("the boundary does not occur"))?
            + delim.len()
    };
    let mut parts = Vec::new();
    loop {
        // after a delimiter: "--" ends the body, else optional padding and CRLF
        let after = &body[pos..];
        if after.starts_with(b"--") {
            return Ok(parts);
        }
        let line_end = find(after, b"\r\n", 0).ok_or_else(|| bad("a delimiter line is cut off"))?;
        if !after[..line_end].iter().all(|b| *b == b' ' || *b == b'\t') {
            return Err(bad("unexpected text after a boundary delimiter"));
        }
        pos += line_end + 2;
        // headers up to an empty line
        let mut headers = Vec::new();
        loop {
            let rest = &body[pos..];
            let e = find(rest, b"\r\n", 0).ok_or_else(|| bad("the part headers are cut off"))?;
            let line = &rest[..e];
            pos += e + 2;
            if line.is_empty() {
                break;
            }
            let line = std::str::from_utf8(line).map_err(|_| bad("a part header is not UTF-8"))?;
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| bad("a part header line has no ':'"))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            if headers.len() > 64 {
                return Err(bad("too many part headers"));
            }
        }
        let end = find(body, delim.as_bytes(), pos)
            .ok_or_else(|| bad("the closing boundary is missing"))?;
        parts.push(Part {
            headers,
            body: &body[pos..end],
        });
        pos = end + delim.len();
    }
}

fn members<'a>(text: &'a [u8], what: &str) -> Result<RawMembers<'a>> {
    RawMembers::parse(text).map_err(|e| Error::bad(format!("{what} must be a JSON object: {e}")))
}

fn get<'a>(m: &RawMembers<'a>, key: &str) -> Option<&'a RawValue> {
    m.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// The body of a `multipart/related` document PUT as the document's JSON text with every
/// `"follows":true` attachment inlined: `follows`, `encoding` and `encoded_length` removed,
/// `data` (base64 of the attachment's bytes) added; every other member keeps its text as sent.
/// `max_decoded` bounds a gzip-encoded part once decompressed.
pub fn inline_document(body: &[u8], content_type: &str, max_decoded: u64) -> Result<Vec<u8>> {
    let boundary = boundary(content_type)?;
    let parts = parse(body, &boundary)?;
    let Some((doc_part, att_parts)) = parts.split_first() else {
        return Err(Error::bad(
            "The multipart body has no parts; the first part must be the JSON document",
        ));
    };
    if let Some(ct) = doc_part.header("content-type") {
        if media_type(ct) != "application/json" {
            return Err(Error::bad(format!(
                "The first multipart part must be application/json, not \"{}\"",
                crate::request::short(ct)
            )));
        }
    }
    let doc = members(doc_part.body, "The document part")?;
    if doc.0.iter().filter(|(k, _)| k == "_attachments").count() > 1 {
        return Err(Error::bad(
            "The document has more than one _attachments member",
        ));
    }
    let mut parts_left = att_parts.iter();
    let mut used = 0usize;
    let mut out = Vec::with_capacity(body.len() * 4 / 3 + 64);
    out.push(b'{');
    for (key, value) in &doc.0 {
        push_key(&mut out, key);
        if key != "_attachments" {
            out.extend_from_slice(value.get().as_bytes());
            continue;
        }
        let Ok(atts) = RawMembers::parse(value.get().as_bytes()) else {
            // not an object: the document write reports it
            out.extend_from_slice(value.get().as_bytes());
            continue;
        };
        out.push(b'{');
        for (name, att_text) in &atts.0 {
            push_key(&mut out, name);
            let att = match RawMembers::parse(att_text.get().as_bytes()) {
                Ok(att) if get(&att, "follows").map(RawValue::get) == Some("true") => att,
                _ => {
                    out.extend_from_slice(att_text.get().as_bytes());
                    continue;
                }
            };
            let part = parts_left.next().ok_or_else(|| {
                Error::bad(format!(
                    "Attachment \"{}\" follows, but the multipart body has no part left for it",
                    crate::request::short(name)
                ))
            })?;
            used += 1;
            let data = attachment_data(name, &att, part, max_decoded)?;
            out.push(b'{');
            for (k, v) in &att.0 {
                if !matches!(
                    k.as_ref(),
                    "follows" | "encoding" | "encoded_length" | "data"
                ) {
                    push_key(&mut out, k);
                    out.extend_from_slice(v.get().as_bytes());
                }
            }
            push_key(&mut out, "data");
            out.push(b'"');
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(&data)
                    .as_bytes(),
            );
            out.push(b'"');
            out.push(b'}');
        }
        out.push(b'}');
    }
    out.push(b'}');
    if parts_left.next().is_some() {
        return Err(Error::bad(format!(
            "The multipart body has {} attachment parts, but the document has {used} attachments with \"follows\":true",
            att_parts.len()
        )));
    }
    Ok(out)
}

/// The bytes of one following attachment, checked against its `length`, `encoded_length`,
/// `digest` and the part's own Content-Length, and gunzipped when it says `gzip`.
fn attachment_data(name: &str, att: &RawMembers, part: &Part, max_decoded: u64) -> Result<Vec<u8>> {
    let name = crate::request::short(name);
    let num = |key: &str| -> Result<Option<u64>> {
        match get(att, key) {
            None => Ok(None),
            Some(v) => match serde_json::from_str::<Value>(v.get()) {
                Ok(Value::Null) => Ok(None),
                Ok(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
                _ => Err(Error::bad(format!(
                    "{key} of attachment \"{name}\" must be a non-negative integer"
                ))),
            },
        }
    };
    let string = |key: &str| -> Result<Option<String>> {
        match get(att, key) {
            None => Ok(None),
            Some(v) => match serde_json::from_str::<Value>(v.get()) {
                Ok(Value::Null) => Ok(None),
                Ok(Value::String(s)) => Ok(Some(s)),
                _ => Err(Error::bad(format!(
                    "{key} of attachment \"{name}\" must be a string"
                ))),
            },
        }
    };
    if let Some(cl) = part.header("content-length") {
        let cl: u64 = cl.trim().parse().map_err(|_| {
            Error::bad(format!(
                "Bad Content-Length in the part of attachment \"{name}\""
            ))
        })?;
        if cl != part.body.len() as u64 {
            return Err(Error::bad(format!(
                "The part of attachment \"{name}\" has {} bytes, but its Content-Length says {cl}",
                part.body.len()
            )));
        }
    }
    let encoding = match (string("encoding")?, part.header("content-encoding")) {
        (Some(a), Some(b)) if !a.eq_ignore_ascii_case(b.trim()) => {
            return Err(Error::bad(format!(
                "Attachment \"{name}\": encoding \"{a}\" does not match the part's Content-Encoding"
            )))
        }
        (Some(a), _) => a.to_ascii_lowercase(),
        (None, Some(b)) => b.trim().to_ascii_lowercase(),
        (None, None) => "identity".into(),
    };
    let data = match encoding.as_str() {
        "identity" => part.body.to_vec(),
        "gzip" => {
            if let Some(el) = num("encoded_length")? {
                if el != part.body.len() as u64 {
                    return Err(Error::bad(format!(
                        "Attachment \"{name}\" has {} encoded bytes, but encoded_length says {el}",
                        part.body.len()
                    )));
                }
            }
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(part.body)
                .take(max_decoded + 1)
                .read_to_end(&mut out)
                .map_err(|_| Error::bad(format!("Attachment \"{name}\" is not valid gzip data")))?;
            if out.len() as u64 > max_decoded {
                return Err(Error::TooLarge(format!(
                    "Attachment \"{name}\" is larger than {max_decoded} bytes once decompressed"
                )));
            }
            out
        }
        other => {
            return Err(Error::bad(format!(
                "Attachment \"{name}\" has an unsupported encoding \"{}\" (identity and gzip are)",
                crate::request::short(other)
            )))
        }
    };
    if let Some(len) = num("length")? {
        if len != data.len() as u64 {
            return Err(Error::bad(format!(
                "Attachment \"{name}\" has {} bytes, but its length says {len}",
                data.len()
            )));
        }
    }
    if let Some(d) = string("digest")? {
        if d.starts_with("md5-") && d != syncgate_storage::attachment_digest(&data) {
            return Err(Error::bad(format!(
                "The digest of attachment \"{name}\" does not match its data"
            )));
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/related; boundary=\"abc\"";

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn boundary_forms() {
        assert_eq!(boundary(CT).unwrap(), "abc");
        assert_eq!(boundary("multipart/related;boundary=x-y").unwrap(), "x-y");
        assert_eq!(
            boundary("Multipart/Related; type=\"application/json\"; BOUNDARY=\"a\\\"b;c\"")
                .unwrap(),
            "a\"b;c"
        );
        assert!(boundary("multipart/related").is_err());
        assert!(boundary("multipart/related; boundary=\"\"").is_err());
        assert!(boundary("multipart/related; boundary=\"abc").is_err());
    }

    #[test]
    fn inlines_following_attachments_keeping_other_members() {
        let body = b"--abc\r\nContent-Type: application/json\r\n\r\n\
{\"z\":1.50,\"big\":12345678901234567890123,\"_attachments\":{\"s\":{\"stub\":true,\"revpos\":1},\
\"a.txt\":{\"follows\":true,\"content_type\":\"text/plain\",\"length\":5},\
\"b\":{\"content_type\":\"x/y\",\"follows\":true,\"length\":2}},\"a\":[1e5]}\
\r\n--abc\r\nContent-Disposition: attachment; filename=\"a.txt\"\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello\
\r\n--abc\r\n\r\n\r\n\r\n--abc--";
        let out = String::from_utf8(inline_document(body, CT, 1 << 20).unwrap()).unwrap();
        assert_eq!(
            out,
            format!(
                "{{\"z\":1.50,\"big\":12345678901234567890123,\"_attachments\":{{\"s\":{{\"stub\":true,\"revpos\":1}},\
\"a.txt\":{{\"content_type\":\"text/plain\",\"length\":5,\"data\":\"{}\"}},\
\"b\":{{\"content_type\":\"x/y\",\"length\":2,\"data\":\"{}\"}}}},\"a\":[1e5]}}",
                b64(b"hello"),
                b64(b"\r\n")
            )
        );
    }

    #[test]
    fn checks_lengths_digests_and_counts() {
        let doc = |att: &str| {
            format!("--abc\r\nContent-Type: application/json\r\n\r\n{{\"_attachments\":{{\"a\":{att}}}}}\r\n--abc\r\n\r\nhello\r\n--abc--")
        };
        let ok = doc("{\"follows\":true,\"length\":5}");
        assert!(inline_document(ok.as_bytes(), CT, 100).is_ok());
        let digest = syncgate_storage::attachment_digest(b"hello");
        let ok = doc(&format!("{{\"follows\":true,\"digest\":\"{digest}\"}}"));
        assert!(inline_document(ok.as_bytes(), CT, 100).is_ok());
        for bad in [
            doc("{\"follows\":true,\"length\":4}"),
            doc(&format!(
                "{{\"follows\":true,\"digest\":\"{}\"}}",
                syncgate_storage::attachment_digest(b"other")
            )),
            doc("{\"follows\":true,\"encoding\":\"br\"}"),
            doc("{\"follows\":true,\"encoding\":\"gzip\"}"),
            // no follows: one part too many
            doc("{\"data\":\"aGVsbG8=\"}"),
            // missing closing boundary
            "--abc\r\n\r\n{}\r\n".into(),
            // two following attachments, one part
            "--abc\r\n\r\n{\"_attachments\":{\"a\":{\"follows\":true},\"b\":{\"follows\":true}}}\r\n--abc\r\n\r\nx\r\n--abc--".into(),
            // first part not JSON
            "--abc\r\nContent-Type: text/plain\r\n\r\n{}\r\n--abc--".into(),
            "--abc\r\n\r\n[1]\r\n--abc--".into(),
            "no boundary here".into(),
        ] {
            let e = inline_document(bad.as_bytes(), CT, 100).unwrap_err();
            assert_eq!(e.status().0, 400, "{bad:?}: {e}");
        }
    }

    #[test]
    fn gzip_parts_are_decoded() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"hello hello hello").unwrap();
        let gz = enc.finish().unwrap();
        let mut body = format!(
            "--abc\r\nContent-Type: application/json\r\n\r\n{{\"_attachments\":{{\"a\":{{\"follows\":true,\"encoding\":\"gzip\",\"encoded_length\":{},\"length\":17,\"digest\":\"{}\"}}}}}}\r\n--abc\r\nContent-Encoding: gzip\r\n\r\n",
            gz.len(),
            syncgate_storage::attachment_digest(b"hello hello hello")
        )
        .into_bytes();
        body.extend_from_slice(&gz);
        body.extend_from_slice(b"\r\n--abc--");
        let out = String::from_utf8(inline_document(&body, CT, 100).unwrap()).unwrap();
        assert!(out.contains(&b64(b"hello hello hello")), "{out}");
        assert!(!out.contains("encoding"), "{out}");
        let e = inline_document(&body, CT, 10).unwrap_err();
        assert_eq!(e.status().0, 413);
    }
}
