//! Parsing and validating what requests send: document bodies (special members, own members as
//! text, the canonical JSON of the revision id), attachment inputs, `_revisions` histories,
//! ids, and `_local` bodies.

use super::*;

/// Checks a document id (not `_local/`).
pub fn validate_doc_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::bad("Document id must not be empty"));
    }
    if id.len() > MAX_DOC_ID {
        return Err(Error::bad(format!(
            "Document id is longer than {MAX_DOC_ID} bytes"
        )));
    }
    if id.starts_with('_') && !id.starts_with("_design/") {
        return Err(Error::bad(format!(
            "Invalid doc ID \"{}\": ids starting with '_' are reserved",
            crate::short(id)
        )));
    }
    Ok(())
}

/// Nesting depth of a JSON value (scalars are 0).
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A 128-bit random id, 32 hex digits.
pub fn new_doc_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Special members, split from a document body.
pub(super) struct Specials {
    pub(super) id: Option<String>,
    pub(super) rev: Option<String>,
    pub(super) deleted: bool,
    pub(super) revisions: Option<Value>,
    pub(super) attachments: Vec<(String, AttachmentInput)>,
}

/// A document from a request: its special members, its own members as compact JSON text in the
/// client's order, and what the rules need from inside them (its channels, and the canonical
/// JSON its revision id is computed from).
pub(super) struct ParsedDoc {
    pub(super) sp: Specials,
    pub(super) json: Vec<u8>,
    pub(super) channels: Vec<String>,
    /// The canonical JSON of the own members plus `_deleted` for a tombstone (see
    /// [`canonical`]); empty unless asked for (a replicated revision keeps its id).
    pub(super) canonical: Vec<u8>,
}

/// A 400 for a request body that is not the JSON it should be.
pub fn bad_json(what: &str, e: &serde_json::Error) -> Error {
    if e.is_syntax() || e.is_eof() {
        Error::bad(format!("{what} is not valid JSON: {e}"))
    } else {
        Error::bad(format!("{what} must be a JSON object ({e})"))
    }
}

pub(super) fn special<T: serde::de::DeserializeOwned>(raw: &RawValue, what: &str) -> Result<T> {
    serde_json::from_str(raw.get()).map_err(|_| Error::bad(what.to_string()))
}

/// A member value whose text is already what [`canonical_json`] writes for it: a string
/// without escapes (serde_json escapes only `"`, `\\` and control characters, none of which
/// such a string can hold), `true`, `false` or `null`. Such a value needs no parsing.
pub(super) fn is_canonical_scalar(raw: &str) -> bool {
    match raw.as_bytes() {
        [b'"', inner @ .., b'"'] => !inner.contains(&b'\\'),
        b"true" | b"false" | b"null" => true,
        _ => false,
    }
}

/// Splits a document's JSON text into its special members and its own members; with
/// `want_canonical`, also writes the canonical JSON of its revision id.
///
/// Only values that are not already canonical text (numbers, objects, arrays, strings with
/// escapes) are parsed into a `Value`, to check them and to write their canonical form; the
/// result is byte for byte that of parsing the whole body into a map.
pub(super) fn parse_doc(text: &[u8], want_canonical: bool) -> Result<ParsedDoc> {
    let members = RawMembers::parse(text).map_err(|e| bad_json("Document body", &e))?;
    let mut sp = Specials {
        id: None,
        rev: None,
        deleted: false,
        revisions: None,
        attachments: Vec::new(),
    };
    // own members in the client's order, with their parsed value where one was needed
    let mut own: Vec<(std::borrow::Cow<str>, &RawValue, Option<Value>)> =
        Vec::with_capacity(members.0.len());
    for (k, v) in members.0 {
        match k.as_ref() {
            "_id" => sp.id = special::<Option<String>>(v, "_id must be a string")?,
            "_rev" => sp.rev = special::<Option<String>>(v, "_rev must be a string")?,
            "_deleted" => {
                sp.deleted =
                    special::<Option<bool>>(v, "_deleted must be a boolean")?.unwrap_or(false)
            }
            "_revisions" => sp.revisions = Some(special::<Value>(v, "bad _revisions")?),
            "_attachments" => {
                sp.attachments = match special::<Value>(v, "bad _attachments")? {
                    Value::Null => Vec::new(),
                    Value::Object(m) => parse_attachments(m)?,
                    _ => return Err(Error::bad("_attachments must be an object")),
                }
            }
            "_conflicts" | "_deleted_conflicts" | "_revs_info" | "_local_seq" | "_exp" => {}
            name if name.starts_with('_') => {
                return Err(Error::bad(format!(
                    "Bad special document member: {}",
                    crate::short(name)
                )))
            }
            name => {
                // `channels` is read by the rules: always parsed
                let value = if name != "channels" && is_canonical_scalar(v.get()) {
                    None
                } else {
                    Some(member_value(name, v)?)
                };
                own.push((k, v, value));
            }
        }
    }
    // a repeated member: the last one wins, as when parsing into a map
    let mut order: Vec<usize> = (0..own.len()).collect();
    order.sort_by(|&a, &b| own[a].0.cmp(&own[b].0).then(a.cmp(&b)));
    let mut keep = vec![true; own.len()];
    for w in order.windows(2) {
        if own[w[0]].0 == own[w[1]].0 {
            keep[w[0]] = false;
        }
    }
    order.retain(|&i| keep[i]);
    let mut depth_max = 0;
    let mut channels = Vec::new();
    for &i in &order {
        if let Some(v) = &own[i].2 {
            depth_max = depth_max.max(depth(v));
            if own[i].0 == "channels" {
                channels = channels_of_value(v);
            }
        }
    }
    if depth_max + 1 > MAX_DEPTH {
        return Err(Error::bad(format!(
            "Document is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let mut json = Vec::with_capacity(text.len());
    json.push(b'{');
    for (i, (k, v, _)) in own.iter().enumerate() {
        if keep[i] {
            push_key(&mut json, k);
            push_compact(&mut json, v.get());
        }
    }
    json.push(b'}');
    let mut canonical = Vec::new();
    if want_canonical {
        canonical.reserve(json.len() + 20);
        canonical.push(b'{');
        let mut deleted_written = !sp.deleted;
        for &i in &order {
            let (k, raw, value) = &own[i];
            if !deleted_written && k.as_ref() > "_deleted" {
                push_key(&mut canonical, "_deleted");
                canonical.extend_from_slice(b"true");
                deleted_written = true;
            }
            push_key(&mut canonical, k);
            match value {
                Some(v) => canonical.extend_from_slice(&canonical_json(v)),
                None => canonical.extend_from_slice(raw.get().as_bytes()),
            }
        }
        if !deleted_written {
            push_key(&mut canonical, "_deleted");
            canonical.extend_from_slice(b"true");
        }
        canonical.push(b'}');
    }
    Ok(ParsedDoc {
        sp,
        json,
        channels,
        canonical,
    })
}

/// A document member's value, parsed for the rules (400 naming the member if it cannot be).
pub(super) fn member_value(name: &str, raw: &RawValue) -> Result<Value> {
    serde_json::from_str(raw.get()).map_err(|e| {
        Error::bad(format!(
            "Document member \"{}\" is not valid: {e}",
            crate::short(name)
        ))
    })
}

/// The members as one compact JSON object, in their order, values as sent.
pub(super) fn object_text(own: &[(std::borrow::Cow<str>, &RawValue)], capacity: usize) -> Vec<u8> {
    let mut json = Vec::with_capacity(capacity);
    json.push(b'{');
    for (k, v) in own {
        push_key(&mut json, k);
        push_compact(&mut json, v.get());
    }
    json.push(b'}');
    json
}

/// The canonical JSON a revision id is computed from: the document's own members, plus
/// `_deleted` for a tombstone.
pub(super) fn canonical(mut view: Map<String, Value>, deleted: bool) -> Vec<u8> {
    if deleted {
        view.insert("_deleted".into(), Value::Bool(true));
    }
    canonical_json(&Value::Object(view))
}

pub(super) fn parse_attachments(m: Map<String, Value>) -> Result<Vec<(String, AttachmentInput)>> {
    let mut out = Vec::with_capacity(m.len());
    for (name, v) in m {
        if name.is_empty() || name.starts_with('_') || name.len() > MAX_DOC_ID {
            return Err(Error::bad(format!(
                "Invalid attachment name \"{}\": must be non-empty and not start with '_'",
                crate::short(&name)
            )));
        }
        let Value::Object(a) = v else {
            return Err(Error::bad(format!(
                "Attachment \"{name}\" must be an object"
            )));
        };
        let content_type = optional_string(&a, "content_type", &name)?;
        let revpos = a.get("revpos").and_then(Value::as_u64);
        let input = if a.get("stub").and_then(Value::as_bool) == Some(true) {
            let digest = optional_string(&a, "digest", &name)?;
            AttachmentInput::Stub {
                digest,
                revpos,
                content_type,
            }
        } else if let Some(data) = a.get("data") {
            let Value::String(data) = data else {
                return Err(Error::bad(format!(
                    "data of attachment \"{name}\" must be a base64 string"
                )));
            };
            let data = B64.decode(data.as_bytes()).map_err(|_| {
                Error::bad(format!("data of attachment \"{name}\" is not valid base64"))
            })?;
            // a `digest` sent beside new data (PouchDB updating an attachment in place keeps
            // the old one) is ignored: the store computes it from the data, as CouchDB does
            AttachmentInput::Data {
                content_type: content_type.unwrap_or_else(|| "application/octet-stream".into()),
                data,
                revpos,
            }
        } else if a.get("follows").and_then(Value::as_bool) == Some(true) {
            return Err(Error::bad(format!(
                "Attachment \"{name}\" uses multipart 'follows'; send the data inline as base64"
            )));
        } else {
            return Err(Error::bad(format!("Missing data of attachment \"{name}\"")));
        };
        out.push((name, input));
    }
    Ok(out)
}

/// The channels a revision is routed to: its `channels` property (string or array of strings).
pub fn channels_of(body: &Map<String, Value>) -> Vec<String> {
    body.get("channels")
        .map(channels_of_value)
        .unwrap_or_default()
}

/// The channels named by a `channels` property's value (a string or an array of strings).
pub(super) fn channels_of_value(value: &Value) -> Vec<String> {
    let mut out: Vec<String> = match Some(value) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    out.retain(|c| !c.is_empty() && !c.contains('\0') && c.len() <= 250);
    out.sort();
    out.dedup();
    out
}

/// History of a replicated revision from `_revisions` (or `_rev` alone), newest first. As in
/// CouchDB, `_revisions` decides when present: a `_rev` beside it is not consulted.
pub(super) fn history_from(rev: Option<&str>, revisions: Option<&Value>) -> Result<Vec<String>> {
    let bad = || Error::bad("Bad _revisions: expected {\"start\":N,\"ids\":[...]}");
    let Some(revs) = revisions else {
        let rev = rev.ok_or_else(bad)?;
        parse_rev(rev)?;
        return Ok(vec![rev.to_string()]);
    };
    let start = revs.get("start").and_then(Value::as_u64).ok_or_else(bad)?;
    let ids = revs.get("ids").and_then(Value::as_array).ok_or_else(bad)?;
    if ids.is_empty() || start < ids.len() as u64 || ids.len() > 100_000 {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let s = id.as_str().ok_or_else(bad)?;
        let r = format!("{}-{}", start - i as u64, s);
        parse_rev(&r)?;
        out.push(r);
    }
    Ok(out)
}

pub(super) fn parse_attachment_name(name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('_') || name.len() > MAX_DOC_ID {
        return Err(Error::bad(
            "Invalid attachment name: must be non-empty and not start with '_'",
        ));
    }
    Ok(())
}

/// A `_local` document from a request: `_rev`, `_deleted` and its own members as compact
/// JSON object text.
pub(super) struct LocalInput {
    pub(super) rev: Option<String>,
    pub(super) deleted: bool,
    pub(super) body: Box<RawValue>,
}

/// Parses a `_local` document's JSON text (400 for what is not a valid one).
pub(super) fn parse_local(text: &[u8]) -> Result<LocalInput> {
    let members = RawMembers::parse(text).map_err(|e| bad_json("Document body", &e))?;
    let mut rev = None;
    let mut deleted = false;
    let mut own: Vec<(std::borrow::Cow<str>, &RawValue)> = Vec::with_capacity(members.0.len());
    let mut deepest = 0;
    for (k, v) in members.0 {
        match k.as_ref() {
            "_rev" => rev = special::<Option<String>>(v, "_rev must be a string")?,
            "_deleted" => {
                deleted = special::<Option<bool>>(v, "_deleted must be a boolean")?.unwrap_or(false)
            }
            // what a document may carry but a local one does not keep
            "_id" | "_revisions" | "_attachments" | "_conflicts" | "_deleted_conflicts"
            | "_revs_info" | "_local_seq" | "_exp" => {}
            name if name.starts_with('_') => {
                return Err(Error::bad(format!(
                    "Bad special document member: {}",
                    crate::short(name)
                )))
            }
            name => {
                let value = member_value(name, v)?;
                deepest = deepest.max(depth(&value));
                // a repeated member: the last one wins, as when parsing into a map
                own.retain(|(o, _)| o.as_ref() != name);
                own.push((k.clone(), v));
            }
        }
    }
    if deepest + 1 > MAX_DEPTH {
        return Err(Error::bad(format!(
            "Document is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let json = object_text(&own, text.len());
    let body = String::from_utf8(json)
        .ok()
        .and_then(|t| RawValue::from_string(t).ok())
        .ok_or_else(|| Error::Internal("a _local body did not re-encode as JSON".into()))?;
    Ok(LocalInput { rev, deleted, body })
}

pub(super) fn validate_local_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_DOC_ID {
        return Err(Error::bad("Invalid _local document id"));
    }
    Ok(())
}

/// An attachment member that is a string or absent (`null` counts as absent).
fn optional_string(
    a: &serde_json::Map<String, Value>,
    member: &str,
    attachment: &str,
) -> Result<Option<String>> {
    match a.get(member) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::bad(format!(
            "{member} of attachment \"{attachment}\" must be a string"
        ))),
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    /// The canonical JSON as it was computed before: the whole body parsed into a map, the
    /// special members dropped, `_deleted` added for a tombstone.
    fn reference(text: &str) -> (Vec<u8>, Vec<String>) {
        let mut m: Map<String, Value> = serde_json::from_str(text).unwrap();
        m.retain(|k, _| !k.starts_with('_'));
        let channels = channels_of(&m);
        let deleted = text.contains("\"_deleted\":true");
        (canonical(m, deleted), channels)
    }

    #[test]
    fn canonical_text_is_that_of_the_parsed_map() {
        for text in [
            r#"{"_id":"a","type":"bench","n":1,"pad":"xxxx"}"#,
            r#"{"b":"\u00e9\n\"q\"","a":"é","c":"\u0041","Z":null,"y":true,"x":false}"#,
            r#"{"n":1.0,"m":1e2,"k":-0,"j":12345678901234567890,"i":0.1,"h":-5}"#,
            r#"{ "nested" : { "z" : [1, 2.50, "s\\t"], "a" : {} }, "arr":[ ], "s":"a b" }"#,
            r#"{"dup":1,"other":"o","dup":"last","dup":[3]}"#,
            r#"{"channels":["b","a","b"],"channels":"c"}"#,
            r#"{"channels":["x","","y"],"A":1,"_deleted":true,"a":2}"#,
            r#"{"_deleted":true}"#,
            r#"{"_deleted":true,"zz":"\/"}"#,
            r#"{"Upper":"U","_deleted":true,"lower":"l","_id":"x"}"#,
        ] {
            let doc = parse_doc(text.as_bytes(), true).unwrap();
            let (canon, channels) = reference(text);
            assert_eq!(
                String::from_utf8_lossy(&doc.canonical),
                String::from_utf8_lossy(&canon),
                "{text}"
            );
            assert_eq!(doc.channels, channels, "{text}");
            assert!(parse_doc(text.as_bytes(), false)
                .unwrap()
                .canonical
                .is_empty());
        }
    }

    #[test]
    fn repeated_members_keep_the_last_in_its_place() {
        let doc = parse_doc(br#"{"a":1,"b":2,"a":3,"c":4,"b":5}"#, false).unwrap();
        assert_eq!(doc.json, br#"{"a":3,"c":4,"b":5}"#);
    }

    /// `content_type` and a stub's `digest` are strings or absent: anything else is a 400
    /// naming the member and the attachment; `null` counts as absent.
    #[test]
    fn attachment_strings_are_checked() {
        let bad = |text: &str| match parse_doc(text.as_bytes(), false) {
            Err(Error::BadRequest(m)) => m,
            other => panic!("{text}: {:?}", other.map(|d| d.json)),
        };
        assert_eq!(
            bad(r#"{"_attachments":{"a.txt":{"content_type":5,"data":"aGk="}}}"#),
            r#"content_type of attachment "a.txt" must be a string"#
        );
        assert_eq!(
            bad(r#"{"_attachments":{"a.txt":{"stub":true,"digest":["md5-x"]}}}"#),
            r#"digest of attachment "a.txt" must be a string"#
        );
        let ok = r#"{"_attachments":{"a.txt":{"stub":true,"digest":null,"content_type":null}}}"#;
        assert!(parse_doc(ok.as_bytes(), false).is_ok());
    }

    #[test]
    fn a_member_that_does_not_parse_is_refused_even_when_repeated() {
        assert!(parse_doc(br#"{"n":1e400,"n":1}"#, true).is_err());
        assert!(parse_doc(br#"{"n":1,"n":1e400}"#, false).is_err());
    }
}
