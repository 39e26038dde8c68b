//! The key layout of one database's sled tree (see the module table in `sled_store`) and the
//! record encodings.

use crate::model::{DocMeta, StoredBody};
use crate::{PrincipalKind, Result, StorageError};

pub(super) const META_LAST_SEQ: &[u8] = b"m\0last_seq";
pub(super) const META_DOC_COUNT: &[u8] = b"m\0doc_count";

pub(super) fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64> {
    Ok(match tree.get(key)? {
        Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
        Some(_) => {
            return Err(StorageError::Corrupt(format!(
                "counter {}",
                String::from_utf8_lossy(key)
            )))
        }
        None => 0,
    })
}

pub(super) fn doc_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + id.len());
    k.extend_from_slice(b"d");
    k.extend_from_slice(id.as_bytes());
    k
}

pub(super) fn body_key(id: &str, rev: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + id.len() + rev.len());
    k.push(b'b');
    k.extend_from_slice(&(id.len() as u32).to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k.extend_from_slice(rev.as_bytes());
    k
}

pub(super) fn seq_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b's';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn channel_key(channel: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + channel.len());
    k.push(b'c');
    k.extend_from_slice(channel.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `g`, the superseding sequence, the superseded one: ordered by when it can be collected.
pub(super) fn superseded_key(next: u64, old: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'g';
    k[1..9].copy_from_slice(&next.to_be_bytes());
    k[9..].copy_from_slice(&old.to_be_bytes());
    k
}

/// Access index key: `p`, the principal kind, its name, NUL, the granting document's id.
pub(super) fn grant_key(kind: PrincipalKind, name: &str, doc: &str) -> Vec<u8> {
    let mut k = grant_prefix(kind, name);
    k.extend_from_slice(doc.as_bytes());
    k
}

pub(super) fn grant_prefix(kind: PrincipalKind, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + name.len());
    k.push(b'p');
    k.push(principal_prefix(kind));
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

pub(super) fn prefixed(p: u8, s: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + s.len());
    k.push(p);
    k.extend_from_slice(s.as_bytes());
    k
}

pub(super) fn principal_prefix(kind: PrincipalKind) -> u8 {
    match kind {
        PrincipalKind::User => b'u',
        PrincipalKind::Role => b'r',
    }
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
}

pub(super) fn encode<T: serde::Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StorageError::Corrupt(format!("cannot encode {what}: {e}")))
}

pub(super) fn encode_body(id: &str, rev: &str, body: &StoredBody) -> Result<Vec<u8>> {
    body.encode().map_err(|e| {
        StorageError::Corrupt(format!(
            "cannot encode the body of \"{}\" revision {rev}: {e}",
            crate::revtree::truncate(id, 100)
        ))
    })
}

pub(super) fn decode_body(id: &str, rev: &str, bytes: &[u8]) -> Result<StoredBody> {
    StoredBody::decode(bytes).map_err(|e| {
        StorageError::Corrupt(format!(
            "body of \"{}\" revision {rev}: {e}",
            crate::revtree::truncate(id, 100)
        ))
    })
}

/// First byte of a `d` record in the second format: `1`, the [`DocMeta`] JSON's length (u32
/// BE), the JSON, then optionally one revision's body kept inline: the revision id's length
/// (u16 BE), the id, and the [`StoredBody`] encoding to the end. The first format (a JSON
/// object, first byte `{`, every body under its own `b` key) is still read.
const DOC_FORMAT_2: u8 = 1;

/// A `d` record split into its parts (not yet decoded).
pub(super) struct DocRecord<'a> {
    pub meta: &'a [u8],
    /// The revision whose body the record holds, and that body's encoding.
    pub inline: Option<(&'a str, &'a [u8])>,
}

fn corrupt_doc(id: &str, what: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!(
        "document \"{}\": {what}",
        crate::revtree::truncate(id, 100)
    ))
}

/// Splits a `d` record of either format; anything else is `Corrupt` naming the document.
pub(super) fn split_doc<'a>(id: &str, bytes: &'a [u8]) -> Result<DocRecord<'a>> {
    match bytes.first() {
        Some(b'{') => Ok(DocRecord {
            meta: bytes,
            inline: None,
        }),
        Some(&DOC_FORMAT_2) => {
            let len = bytes
                .get(1..5)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .ok_or_else(|| corrupt_doc(id, "truncated header"))?;
            let end = 5 + u32::from_be_bytes(len) as usize;
            let meta = bytes
                .get(5..end)
                .ok_or_else(|| corrupt_doc(id, "truncated metadata"))?;
            let rest = &bytes[end..];
            if rest.is_empty() {
                return Ok(DocRecord { meta, inline: None });
            }
            let rev_len = rest
                .get(..2)
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .ok_or_else(|| corrupt_doc(id, "truncated inline body"))?;
            let rev_end = 2 + u16::from_be_bytes(rev_len) as usize;
            let rev = rest
                .get(2..rev_end)
                .and_then(|r| std::str::from_utf8(r).ok())
                .ok_or_else(|| corrupt_doc(id, "bad inline revision id"))?;
            Ok(DocRecord {
                meta,
                inline: Some((rev, &rest[rev_end..])),
            })
        }
        Some(b) => Err(corrupt_doc(id, format!("unknown record format {b}"))),
        None => Err(corrupt_doc(id, "empty record")),
    }
}

/// A `d` record's metadata.
pub(super) fn decode_doc(id: &str, bytes: &[u8]) -> Result<DocMeta> {
    let rec = split_doc(id, bytes)?;
    serde_json::from_slice(rec.meta).map_err(|e| corrupt_doc(id, e))
}

/// A `d` record (second format) holding `meta` and, optionally, the encoded body of one
/// revision.
pub(super) fn encode_doc(id: &str, meta: &DocMeta, inline: Option<(&str, &[u8])>) -> Result<Vec<u8>> {
    let extra = inline.map_or(0, |(r, b)| 2 + r.len() + b.len());
    let mut out = Vec::with_capacity(5 + 256 + extra);
    out.push(DOC_FORMAT_2);
    out.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut out, meta)
        .map_err(|e| corrupt_doc(id, format!("cannot encode: {e}")))?;
    let len = u32::try_from(out.len() - 5).map_err(|_| corrupt_doc(id, "metadata over 4 GiB"))?;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    if let Some((rev, body)) = inline {
        let rev_len =
            u16::try_from(rev.len()).map_err(|_| corrupt_doc(id, "revision id over 64 KiB"))?;
        out.extend_from_slice(&rev_len.to_be_bytes());
        out.extend_from_slice(rev.as_bytes());
        out.extend_from_slice(body);
    }
    Ok(out)
}
