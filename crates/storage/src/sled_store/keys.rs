//! The key layout of one database's sled tree (see the module table in `sled_store`) and the
//! record encodings.

use crate::model::{ChangeEntry, ChangeRev, DocMeta, StoredBody};
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

/// First byte of a `d` record in the second format: `1`, the length (u32 BE) of the
/// [`DocMeta`] in binary ([`encode_meta`]), that encoding, then optionally one revision's body
/// kept inline: the revision id's length (u16 BE), the id, and the [`StoredBody`] encoding to
/// the end. The first format (the metadata as a JSON object, first byte `{`, every body under
/// its own `b` key) is still read.
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
    if bytes.first() == Some(&b'{') {
        return serde_json::from_slice(rec.meta).map_err(|e| corrupt_doc(id, e));
    }
    decode_meta(rec.meta).map_err(|e| corrupt_doc(id, e))
}

/// A `d` record (second format) holding `meta` and, optionally, the encoded body of one
/// revision.
pub(super) fn encode_doc(
    id: &str,
    meta: &DocMeta,
    inline: Option<(&str, &[u8])>,
) -> Result<Vec<u8>> {
    let extra = inline.map_or(0, |(r, b)| 2 + r.len() + b.len());
    let mut out = Vec::with_capacity(5 + 256 + extra);
    out.push(DOC_FORMAT_2);
    out.extend_from_slice(&[0; 4]);
    encode_meta(&mut out, meta).map_err(|e| corrupt_doc(id, format!("cannot encode: {e}")))?;
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

// ------------------------------------------------------------------ binary document metadata
//
// The revision tree as JSON cost about 105 bytes per revision (hex digests, member names,
// every parent spelled out) and a JSON parse on every read of a document. In binary (integers
// as LEB128 varints, strings as varint length + bytes):
//
// seq, node count, per node: flags, rev, [parent], seq, [channels], [access]; then the
// channel history (count, strings).
//
// flags: DELETED, HAS_BODY; REV_DIGEST: the id is `<generation>-<32 lowercase hex>` and is
// stored as the generation and the 16-byte digest (else as a string); PARENT_INDEX: the
// parent is node i of this tree (varint i); PARENT_TEXT: a parent not in the tree (string);
// CHANNELS: count and strings follow; ACCESS: the sync function's grants as JSON (a string).

const DELETED: u8 = 1;
const HAS_BODY: u8 = 2;
const REV_DIGEST: u8 = 4;
const PARENT_INDEX: u8 = 8;
const PARENT_TEXT: u8 = 16;
const CHANNELS: u8 = 32;
const ACCESS: u8 = 64;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// `<generation>-<32 lowercase hex>` with the generation as Rust prints it: (generation, digest).
fn digest_rev(rev: &str) -> Option<(u64, [u8; 16])> {
    let (gen, hex) = rev.split_once('-')?;
    // only the form Rust prints (no sign, no leading zero), so decoding gives `rev` back
    let canonical = !gen.is_empty()
        && gen.bytes().all(|b| b.is_ascii_digit())
        && (gen.len() == 1 || !gen.starts_with('0'));
    if !canonical || hex.len() != 32 {
        return None;
    }
    let g: u64 = gen.parse().ok()?;
    let mut d = [0u8; 16];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let nib = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        d[i] = (nib(pair[0])? << 4) | nib(pair[1])?;
    }
    Some((g, d))
}

/// A revision id as generation and digest when `digest_rev` gave them, else as a string.
fn put_rev(out: &mut Vec<u8>, rev: &str, digest: Option<(u64, [u8; 16])>) {
    match digest {
        Some((g, d)) => {
            put_varint(out, g);
            out.extend_from_slice(&d);
        }
        None => put_str(out, rev),
    }
}

/// Appends the binary form of `meta` (see above).
pub(super) fn encode_meta(out: &mut Vec<u8>, meta: &DocMeta) -> std::result::Result<(), String> {
    let nodes = &meta.tree.nodes;
    put_varint(out, meta.seq);
    put_varint(out, nodes.len() as u64);
    let index: std::collections::HashMap<&str, usize> = if nodes.len() > 8 {
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.rev.as_str(), i))
            .collect()
    } else {
        Default::default()
    };
    let find = |rev: &str| -> Option<usize> {
        if nodes.len() > 8 {
            index.get(rev).copied()
        } else {
            nodes.iter().position(|n| n.rev == rev)
        }
    };
    for n in nodes {
        let digest = digest_rev(&n.rev);
        let parent = n.parent.as_deref().map(|p| (p, find(p)));
        let mut flags = 0;
        if n.deleted {
            flags |= DELETED;
        }
        if n.has_body {
            flags |= HAS_BODY;
        }
        if digest.is_some() {
            flags |= REV_DIGEST;
        }
        match parent {
            Some((_, Some(_))) => flags |= PARENT_INDEX,
            Some((_, None)) => flags |= PARENT_TEXT,
            None => {}
        }
        if !n.channels.is_empty() {
            flags |= CHANNELS;
        }
        if !n.access.is_empty() {
            flags |= ACCESS;
        }
        out.push(flags);
        put_rev(out, &n.rev, digest);
        match parent {
            Some((_, Some(i))) => put_varint(out, i as u64),
            Some((p, None)) => put_str(out, p),
            None => {}
        }
        put_varint(out, n.seq);
        if !n.channels.is_empty() {
            put_varint(out, n.channels.len() as u64);
            for c in &n.channels {
                put_str(out, c);
            }
        }
        if !n.access.is_empty() {
            let json = serde_json::to_string(&n.access)
                .map_err(|e| format!("grants of {}: {e}", n.rev))?;
            put_str(out, &json);
        }
    }
    put_varint(out, meta.channel_history.len() as u64);
    for c in &meta.channel_history {
        put_str(out, c);
    }
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> std::result::Result<u8, String> {
        let (&b, rest) = self.0.split_first().ok_or("truncated metadata")?;
        self.0 = rest;
        Ok(b)
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("bad varint in metadata".into())
    }

    fn bytes(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated metadata".into());
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(b)
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let n = usize::try_from(self.varint()?).map_err(|_| "bad length in metadata")?;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "bad UTF-8 in metadata".into())
    }

    /// A revision id written by [`put_rev`] (`digest`: as generation and digest).
    fn rev(&mut self, digest: bool) -> std::result::Result<String, String> {
        use std::fmt::Write;
        if !digest {
            return self.string();
        }
        let g = self.varint()?;
        let d = self.bytes(16)?;
        let mut rev = String::with_capacity(40);
        let _ = write!(rev, "{g}-");
        for b in d {
            let _ = write!(rev, "{b:02x}");
        }
        Ok(rev)
    }

    /// A count of items that take at least one byte each (bounds allocations on bad input).
    fn count(&mut self) -> std::result::Result<usize, String> {
        let n = self.varint()?;
        if n > self.0.len() as u64 {
            return Err("bad count in metadata".into());
        }
        Ok(n as usize)
    }
}

/// Reads what [`encode_meta`] wrote; anything else is an error describing what is wrong.
pub(super) fn decode_meta(bytes: &[u8]) -> std::result::Result<DocMeta, String> {
    use crate::revtree::{RevNode, RevTree};
    let mut r = Reader(bytes);
    let seq = r.varint()?;
    let count = r.count()?;
    let mut nodes = Vec::with_capacity(count);
    let mut parents: Vec<Option<usize>> = Vec::with_capacity(count);
    for _ in 0..count {
        let flags = r.byte()?;
        if flags & 0x80 != 0 || flags & (PARENT_INDEX | PARENT_TEXT) == PARENT_INDEX | PARENT_TEXT {
            return Err(format!("bad revision flags {flags}"));
        }
        let rev = r.rev(flags & REV_DIGEST != 0)?;
        let mut parent = None;
        let mut parent_at = None;
        if flags & PARENT_INDEX != 0 {
            let i = usize::try_from(r.varint()?).map_err(|_| "bad parent index")?;
            if i >= count {
                return Err(format!("parent index {i} out of {count} revisions"));
            }
            parent_at = Some(i);
        } else if flags & PARENT_TEXT != 0 {
            parent = Some(r.string()?);
        }
        let node_seq = r.varint()?;
        let channels = if flags & CHANNELS != 0 {
            let n = r.count()?;
            (0..n)
                .map(|_| r.string())
                .collect::<std::result::Result<_, _>>()?
        } else {
            Vec::new()
        };
        let access = if flags & ACCESS != 0 {
            serde_json::from_str(&r.string()?).map_err(|e| format!("grants of {rev}: {e}"))?
        } else {
            Default::default()
        };
        nodes.push(RevNode {
            rev,
            parent,
            deleted: flags & DELETED != 0,
            seq: node_seq,
            has_body: flags & HAS_BODY != 0,
            channels,
            access,
        });
        parents.push(parent_at);
    }
    for (i, p) in parents.into_iter().enumerate() {
        if let Some(p) = p {
            nodes[i].parent = Some(nodes[p].rev.clone());
        }
    }
    let n = r.count()?;
    let channel_history = (0..n)
        .map(|_| r.string())
        .collect::<std::result::Result<_, _>>()?;
    if !r.0.is_empty() {
        return Err("trailing bytes after metadata".into());
    }
    Ok(DocMeta {
        seq,
        tree: RevTree { nodes },
        channel_history,
    })
}

// ------------------------------------------------------------------ by-sequence entries
//
// An `s` value: byte `1`, seq, id, leaf count, per leaf: flags (DELETED, REV_DIGEST) and the
// revision id as in the metadata; channels (count, strings); removed (count, strings); then
// 0, or 1 and the superseding sequence. The first format (a JSON object) is still read.

const CHANGE_FORMAT_2: u8 = 1;

/// The binary `s` value of `entry`.
pub(super) fn encode_change(entry: &ChangeEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + entry.id.len() + 24 * entry.leaves.len());
    out.push(CHANGE_FORMAT_2);
    put_varint(&mut out, entry.seq);
    put_str(&mut out, &entry.id);
    put_varint(&mut out, entry.leaves.len() as u64);
    for l in &entry.leaves {
        let digest = digest_rev(&l.rev);
        let mut flags = 0;
        if l.deleted {
            flags |= DELETED;
        }
        if digest.is_some() {
            flags |= REV_DIGEST;
        }
        out.push(flags);
        put_rev(&mut out, &l.rev, digest);
    }
    for list in [&entry.channels, &entry.removed] {
        put_varint(&mut out, list.len() as u64);
        for c in list {
            put_str(&mut out, c);
        }
    }
    match entry.superseded {
        Some(next) => {
            out.push(1);
            put_varint(&mut out, next);
        }
        None => out.push(0),
    }
    out
}

/// An `s` value of either format (`key` names it in errors).
pub(super) fn decode_change(key: &[u8], bytes: &[u8]) -> Result<ChangeEntry> {
    let corrupt = |e: String| {
        let seq = key
            .get(1..9)
            .and_then(|k| <[u8; 8]>::try_from(k).ok())
            .map_or_else(|| "?".to_string(), |k| u64::from_be_bytes(k).to_string());
        StorageError::Corrupt(format!("change entry at sequence {seq}: {e}"))
    };
    match bytes.first() {
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string())),
        Some(&CHANGE_FORMAT_2) => decode_change_v2(&bytes[1..]).map_err(corrupt),
        Some(b) => Err(corrupt(format!("unknown record format {b}"))),
        None => Err(corrupt("empty record".into())),
    }
}

fn decode_change_v2(bytes: &[u8]) -> std::result::Result<ChangeEntry, String> {
    let mut r = Reader(bytes);
    let seq = r.varint()?;
    let id = r.string()?;
    let n = r.count()?;
    let mut leaves = Vec::with_capacity(n);
    for _ in 0..n {
        let flags = r.byte()?;
        if flags & !(DELETED | REV_DIGEST) != 0 {
            return Err(format!("bad leaf flags {flags}"));
        }
        leaves.push(ChangeRev {
            rev: r.rev(flags & REV_DIGEST != 0)?,
            deleted: flags & DELETED != 0,
        });
    }
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        let n = r.count()?;
        *list = (0..n)
            .map(|_| r.string())
            .collect::<std::result::Result<_, _>>()?;
    }
    let [channels, removed] = lists;
    let superseded = match r.byte()? {
        0 => None,
        1 => Some(r.varint()?),
        b => return Err(format!("bad superseded mark {b}")),
    };
    if !r.0.is_empty() {
        return Err("trailing bytes after the entry".into());
    }
    Ok(ChangeEntry {
        seq,
        id,
        leaves,
        channels,
        removed,
        superseded,
    })
}
