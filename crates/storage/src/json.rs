//! JSON text kept exactly as a client sent it.
//!
//! A sync server must hand documents back as they were written: every number with its digits
//! (`12345678901234567890123`, `90.28571428571429`, `1e400`) and every object member in its
//! order. Parsing into `serde_json::Value` loses both (numbers become `f64`/`u64`, members are
//! sorted), so bodies travel through the server as text: a document's top level is split into
//! its members with each value kept as its original text ([`RawMembers`]), special members
//! (`_id`, `_attachments`, …) are taken out, and the rest is written back compactly
//! ([`push_compact`]) — only insignificant whitespace is dropped. A `Value` view is parsed
//! alongside only where the server must look inside (channels, the revision id).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The members of one JSON object, in order, each value as its original text.
pub struct RawMembers<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> RawMembers<'a> {
    /// Splits the text of a JSON object into its members. Anything else is an error.
    pub fn parse(text: &'a [u8]) -> Result<RawMembers<'a>, serde_json::Error> {
        serde_json::from_slice(text)
    }
}

/// An object key, borrowed from the input unless it contains escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for RawMembers<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMembers<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawMembers<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    out.push((k, v));
                }
                Ok(RawMembers(out))
            }
        }
        d.deserialize_map(V).map_err(|e| {
            if e.to_string().starts_with("invalid type") {
                D::Error::custom("expected a JSON object")
            } else {
                e
            }
        })
    }
}

/// Appends `raw` (valid JSON text) without insignificant whitespace.
pub fn push_compact(out: &mut Vec<u8>, raw: &str) {
    let bytes = raw.as_bytes();
    if !bytes
        .iter()
        .any(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
    {
        out.extend_from_slice(bytes);
        return;
    }
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b' ' | b'\n' | b'\r' | b'\t' => {}
                b'"' => {
                    in_string = true;
                    out.push(b);
                }
                _ => out.push(b),
            }
        }
    }
}

/// Appends `s` as a JSON string.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    // writing a &str into a Vec cannot fail
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends `"key":` (after a comma unless `out` ends an opening brace or bracket).
pub fn push_key(out: &mut Vec<u8>, key: &str) {
    if !matches!(out.last(), Some(b'{') | Some(b'[') | None) {
        out.push(b',');
    }
    push_str(out, key);
    out.push(b':');
}

/// Appends the members of the object text `object` (compact JSON `{…}`) to an object being
/// written in `out`, after a comma where needed.
pub fn push_members(out: &mut Vec<u8>, object: &[u8]) {
    let inner = object
        .strip_prefix(b"{")
        .and_then(|o| o.strip_suffix(b"}"))
        .unwrap_or(b"");
    if inner.is_empty() {
        return;
    }
    if !matches!(out.last(), Some(b'{') | None) {
        out.push(b',');
    }
    out.extend_from_slice(inner);
}

/// Appends any serializable value as JSON.
pub fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // serializing our own plain values into a Vec cannot fail
    let _ = serde_json::to_writer(&mut *out, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_order_and_number_text() {
        let text = br#"{"neg":-0.0, "e":1E+400,"i":12345678901234567890123,"f":90.28571428571429,"s":"a\"b","k\u0041":{"x" : [1, 2]}}"#;
        let m = RawMembers::parse(text).unwrap();
        let keys: Vec<&str> = m.0.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["neg", "e", "i", "f", "s", "kA"]);
        let mut out = b"{".to_vec();
        for (k, v) in &m.0 {
            push_key(&mut out, k);
            push_compact(&mut out, v.get());
        }
        out.push(b'}');
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"neg":-0.0,"e":1E+400,"i":12345678901234567890123,"f":90.28571428571429,"s":"a\"b","kA":{"x":[1,2]}}"#
        );
    }

    #[test]
    fn non_objects_are_refused() {
        assert!(RawMembers::parse(b"[1]").is_err());
        assert!(RawMembers::parse(b"\"x\"").is_err());
        assert!(RawMembers::parse(b"{\"a\":").is_err());
    }

    #[test]
    fn compact_keeps_whitespace_inside_strings() {
        let mut out = Vec::new();
        push_compact(&mut out, "{ \"a b\" : \" \\\" x \" , \"c\":[ 1 ,\n2 ] }");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a b":" \" x ","c":[1,2]}"#
        );
    }

    #[test]
    fn members_append_with_commas() {
        let mut out = b"{\"_id\":\"x\"".to_vec();
        push_members(&mut out, b"{\"a\":1}");
        push_members(&mut out, b"{}");
        out.push(b'}');
        assert_eq!(out, b"{\"_id\":\"x\",\"a\":1}");
    }
}
