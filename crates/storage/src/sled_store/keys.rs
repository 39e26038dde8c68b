//! The key layout of one database's sled tree (see the module table in `sled_store`) and the
//! record encodings.

use crate::model::StoredBody;
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
