//! Values crossing the storage boundary.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::revtree::RevTree;

/// Stored metadata of one document: its revision tree and current sequence.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DocMeta {
    /// Sequence of the document's latest change.
    pub seq: u64,
    pub tree: RevTree,
    /// Every channel the winning revision has ever been in (sorted): the channels it has left
    /// are `channel_history` minus the current winner's channels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channel_history: Vec<String>,
}

impl DocMeta {
    /// The winning revision id and whether it is deleted.
    pub fn winner(&self) -> Option<(&str, bool)> {
        self.tree.winner().map(|n| (n.rev.as_str(), n.deleted))
    }
    pub fn is_live(&self) -> bool {
        self.winner().is_some_and(|(_, d)| !d)
    }
}

/// An attachment as a writer supplies it.
#[derive(Debug, Clone)]
pub enum AttachmentInput {
    /// New data (decoded from base64 or a standalone upload).
    Data {
        content_type: String,
        data: Vec<u8>,
        revpos: Option<u64>,
    },
    /// Unchanged attachment: refers to the parent revision's attachment of the same name, or to
    /// stored data by digest.
    Stub {
        digest: Option<String>,
        revpos: Option<u64>,
        content_type: Option<String>,
    },
}

/// One document write.
#[derive(Debug, Clone)]
pub enum DocWrite {
    /// An interactive edit (`new_edits=true`): the parent must be a current leaf, or absent for a
    /// new document or one whose winner is a tombstone.
    Edit {
        id: String,
        parent: Option<String>,
        deleted: bool,
        /// The user members as compact JSON object text, as the client sent them.
        body: Vec<u8>,
        /// Canonical JSON of the same members (plus `_deleted` for a tombstone) for the
        /// revision id: [`canonical_json`] of their parsed value.
        canonical: Vec<u8>,
        attachments: Vec<(String, AttachmentInput)>,
        /// Channels of the new revision.
        channels: Vec<String>,
        /// Grants of the new revision (from the sync function).
        access: RevAccess,
        revs_limit: usize,
        /// When set, a missing document is an error (DELETE of a missing doc is 404).
        must_exist: bool,
    },
    /// A replicated revision (`new_edits=false`) with its history, newest first.
    Replicate {
        id: String,
        history: Vec<String>,
        deleted: bool,
        /// The user members as compact JSON object text, as the client sent them.
        body: Vec<u8>,
        attachments: Vec<(String, AttachmentInput)>,
        channels: Vec<String>,
        /// Grants of the new revision (from the sync function).
        access: RevAccess,
        revs_limit: usize,
    },
}

impl DocWrite {
    pub fn id(&self) -> &str {
        match self {
            DocWrite::Edit { id, .. } | DocWrite::Replicate { id, .. } => id,
        }
    }
}

/// Result of one successful write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    pub id: String,
    pub rev: String,
    /// Sequence assigned (0 when the write was a no-op: the revision already existed).
    pub seq: u64,
}

/// A leaf as the changes feed reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangeRev {
    pub rev: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// One row of the by-sequence index: a document at its latest sequence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangeEntry {
    pub seq: u64,
    pub id: String,
    /// Leaves, winner first.
    pub leaves: Vec<ChangeRev>,
    /// Channels of the winning revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Channels the document was in before and is not in now (for removal notices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// The sequence of the document's next change, once there is one. A superseded entry is
    /// kept (for readers whose view predates that change) until no view can need it; a view
    /// at sequence V shows an entry only while `superseded` is absent or above V.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded: Option<u64>,
}

impl ChangeEntry {
    /// Whether a view at sequence `view` shows this entry: the document was at this sequence
    /// then (the entry is durable by then and its next change is not).
    pub fn visible_at(&self, view: u64) -> bool {
        self.seq <= view && self.superseded.is_none_or(|next| next > view)
    }

    pub fn deleted(&self) -> bool {
        self.leaves.first().is_some_and(|l| l.deleted)
    }
}

/// A `_local` document: its rev and its own members (no `_` members) as the client's compact
/// JSON object text. Stored as `{"rev":…,"body":{…}}`, the body written as that text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalDoc {
    pub rev: String,
    pub body: Box<serde_json::value::RawValue>,
}

/// Attachment metadata as stored in a revision body's `_attachments`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachmentMeta {
    pub content_type: String,
    pub digest: String,
    pub length: u64,
    pub revpos: u64,
    #[serde(default)]
    pub stub: bool,
}

/// A revision's body as stored: the user members as the client sent them and the attachment
/// metadata the store resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredBody {
    /// Compact JSON object text of the user members, in the client's order and digits.
    pub json: Vec<u8>,
    /// Attachment metadata, in the order written.
    pub attachments: Vec<(String, AttachmentMeta)>,
}

/// First byte of a stored body in the current format (the first format was a JSON object).
const BODY_FORMAT_1: u8 = 1;

impl StoredBody {
    /// `[1][u32 LE length of json][json][attachments as a JSON object, when any]`: the user
    /// members are stored as sent and read back without parsing them.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let len =
            u32::try_from(self.json.len()).map_err(|_| "body larger than 4 GiB".to_string())?;
        let mut out = Vec::with_capacity(self.json.len() + 5 + self.attachments.len() * 96);
        out.push(BODY_FORMAT_1);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&self.json);
        if !self.attachments.is_empty() {
            out.push(b'{');
            for (name, meta) in &self.attachments {
                crate::json::push_key(&mut out, name);
                serde_json::to_writer(&mut out, meta)
                    .map_err(|e| format!("attachment \"{name}\": {e}"))?;
            }
            out.push(b'}');
        }
        Ok(out)
    }

    /// Reads either format; anything else is an error describing what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<StoredBody, String> {
        match bytes.first() {
            Some(&BODY_FORMAT_1) => {
                let len: [u8; 4] = bytes
                    .get(1..5)
                    .and_then(|b| b.try_into().ok())
                    .ok_or("truncated header")?;
                let end = 5 + u32::from_le_bytes(len) as usize;
                let json = bytes.get(5..end).ok_or("truncated body")?.to_vec();
                let attachments = match &bytes[end..] {
                    [] => Vec::new(),
                    rest => decode_attachments(rest)?,
                };
                Ok(StoredBody { json, attachments })
            }
            Some(b'{') => {
                // the first format: one JSON object with `_attachments` among the members
                let members = crate::json::RawMembers::parse(bytes).map_err(|e| e.to_string())?;
                let mut json = vec![b'{'];
                let mut attachments = Vec::new();
                for (k, v) in members.0 {
                    if k == "_attachments" {
                        attachments = decode_attachments(v.get().as_bytes())?;
                    } else {
                        crate::json::push_key(&mut json, &k);
                        crate::json::push_compact(&mut json, v.get());
                    }
                }
                json.push(b'}');
                Ok(StoredBody { json, attachments })
            }
            _ => Err("unknown body format".into()),
        }
    }

    /// The user members parsed (numbers as `f64`/`u64`: a view for rules, never for output).
    pub fn value(&self) -> Result<Map<String, Value>, String> {
        serde_json::from_slice(&self.json).map_err(|e| e.to_string())
    }

    /// The metadata of one attachment.
    pub fn attachment(&self, name: &str) -> Option<&AttachmentMeta> {
        self.attachments
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m)
    }
}

fn decode_attachments(text: &[u8]) -> Result<Vec<(String, AttachmentMeta)>, String> {
    let members = crate::json::RawMembers::parse(text).map_err(|e| format!("_attachments: {e}"))?;
    members
        .0
        .into_iter()
        .map(|(k, v)| {
            let meta: AttachmentMeta =
                serde_json::from_str(v.get()).map_err(|e| format!("attachment \"{k}\": {e}"))?;
            Ok((k.into_owned(), meta))
        })
        .collect()
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactStats {
    pub bodies_removed: u64,
    pub attachments_removed: u64,
}

/// Canonical JSON: sorted keys, compact. Independent of serde_json's map ordering feature.
pub fn canonical_json(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            out.push(b'{');
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                crate::json::push_str(out, k);
                out.push(b':');
                write_canonical(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        other => crate::json::push_json(out, other),
    }
}

/// CouchDB attachment digest: `md5-` + base64 of the MD5.
pub fn attachment_digest(data: &[u8]) -> String {
    use base64::Engine;
    use md5::{Digest, Md5};
    format!(
        "md5-{}",
        base64::engine::general_purpose::STANDARD.encode(Md5::digest(data))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(revpos: u64) -> AttachmentMeta {
        AttachmentMeta {
            content_type: "text/plain".into(),
            digest: "md5-XUFAKrxLKna5cZ2REBfFkg==".into(),
            length: 5,
            revpos,
            stub: true,
        }
    }

    #[test]
    fn stored_bodies_round_trip() {
        let b = StoredBody {
            json: br#"{"z":1.0,"a":12345678901234567890123}"#.to_vec(),
            attachments: vec![("b.txt".into(), meta(2)), ("a.txt".into(), meta(1))],
        };
        assert_eq!(StoredBody::decode(&b.encode().unwrap()).unwrap(), b);
        let empty = StoredBody {
            json: b"{}".to_vec(),
            attachments: vec![],
        };
        assert_eq!(StoredBody::decode(&empty.encode().unwrap()).unwrap(), empty);
    }

    #[test]
    fn first_format_bodies_still_read() {
        let old = br#"{"_attachments":{"f.txt":{"content_type":"text/plain","digest":"md5-XUFAKrxLKna5cZ2REBfFkg==","length":5,"revpos":1,"stub":true}},"a":1,"b":[1, 2]}"#;
        let b = StoredBody::decode(old).unwrap();
        assert_eq!(b.json, br#"{"a":1,"b":[1,2]}"#);
        assert_eq!(b.attachments, vec![("f.txt".to_string(), meta(1))]);
    }

    #[test]
    fn corrupt_bodies_are_errors_not_defaults() {
        assert!(StoredBody::decode(b"").is_err());
        assert!(StoredBody::decode(b"\x01\x10\x00\x00\x00{}").is_err());
        assert!(StoredBody::decode(b"\x01\x02\x00\x00\x00{}{\"x\":{\"digest\":1}}").is_err());
        assert!(StoredBody::decode(br#"{"_attachments":{"x":7}}"#).is_err());
        assert!(StoredBody::decode(b"\x07junk").is_err());
    }
}

/// Grants a revision's sync function made: `access()` (user name, or `role:NAME` → channels)
/// and `role()` (user name → role names). Only the winning revision's grants are in effect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevAccess {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub channels: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub roles: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
}

impl RevAccess {
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.roles.is_empty()
    }
}

/// What one document's winning revision grants one user or role (the access index entry):
/// channel or role → sequence of the revision that first granted it, and what a later
/// revision took away → sequence of that revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocGrant {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub channels: std::collections::BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub roles: std::collections::BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub revoked_channels: std::collections::BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub revoked_roles: std::collections::BTreeMap<String, u64>,
}

/// One access-index entry as a write batch left it: what document `doc` now grants the user
/// or role `name` (`None`: nothing any more). Caches of effective channels apply these
/// instead of re-reading every grant of a principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantChange {
    pub kind: crate::PrincipalKind,
    pub name: String,
    pub doc: String,
    pub grant: Option<DocGrant>,
}

impl DocGrant {
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
            && self.roles.is_empty()
            && self.revoked_channels.is_empty()
            && self.revoked_roles.is_empty()
    }
}

/// A new decision of the sync function for a document's winning revision (`_resync`, or the
/// re-run after the winner switched to another branch): its channels and grants. Applied only
/// while `rev` is still the winner, and only if something changed; the document then gets a
/// new sequence (so feeds see its new channels, removals and the grants' fresh sequences), but
/// no new revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restamp {
    pub id: String,
    pub rev: String,
    pub channels: Vec<String>,
    pub access: RevAccess,
}
