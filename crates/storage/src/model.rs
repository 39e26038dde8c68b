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
        body: Map<String, Value>,
        attachments: Vec<(String, AttachmentInput)>,
        /// Channels of the new revision.
        channels: Vec<String>,
        revs_limit: usize,
        /// When set, a missing document is an error (DELETE of a missing doc is 404).
        must_exist: bool,
    },
    /// A replicated revision (`new_edits=false`) with its history, newest first.
    Replicate {
        id: String,
        history: Vec<String>,
        deleted: bool,
        body: Map<String, Value>,
        attachments: Vec<(String, AttachmentInput)>,
        channels: Vec<String>,
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
}

impl ChangeEntry {
    pub fn deleted(&self) -> bool {
        self.leaves.first().is_some_and(|l| l.deleted)
    }
}

/// A `_local` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalDoc {
    pub rev: String,
    pub body: Map<String, Value>,
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
                // serializing a string cannot fail
                out.extend_from_slice(serde_json::to_string(k).unwrap_or_default().as_bytes());
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
        other => out.extend_from_slice(serde_json::to_string(other).unwrap_or_default().as_bytes()),
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
