//! CouchDB revision trees: the pure data structure, with no I/O.
//!
//! A tree is a flat list of nodes, each naming its parent by revision id. Roots may have a
//! generation above 1 once `revs_limit` pruning has dropped their ancestors.

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

use crate::{RevAccess, StorageError};

/// Longest revision id accepted (generation, dash and digest).
pub const MAX_REV_LEN: usize = 200;

/// One revision of a document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevNode {
    /// `N-digest`.
    pub rev: String,
    /// Parent revision id; `None` for a root (original or left by pruning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The revision is a tombstone.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// The database sequence at which this revision was added.
    pub seq: u64,
    /// A body is stored for this revision (leaves always; ancestors until compaction).
    #[serde(default, skip_serializing_if = "is_false")]
    pub has_body: bool,
    /// Channels of this revision (its `channels` property), used for access checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Grants the sync function made for this revision (kept on leaves only): in effect while
    /// it is the winner.
    #[serde(default, skip_serializing_if = "RevAccess::is_empty")]
    pub access: RevAccess,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Parses `N-suffix`, returning the generation and suffix.
pub fn parse_rev(rev: &str) -> Result<(u64, &str), StorageError> {
    let bad = || StorageError::BadRequest(format!("Invalid revision ID \"{}\"", truncate(rev, 64)));
    if rev.len() > MAX_REV_LEN {
        return Err(bad());
    }
    let (gen, suffix) = rev.split_once('-').ok_or_else(bad)?;
    if gen.is_empty() || !gen.bytes().all(|b| b.is_ascii_digit()) || gen.len() > 15 {
        return Err(bad());
    }
    let gen: u64 = gen.parse().map_err(|_| bad())?;
    if gen == 0
        || suffix.is_empty()
        || !suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    {
        return Err(bad());
    }
    Ok((gen, suffix))
}

/// Generation of a revision id already known to be valid (0 when it is not).
pub fn generation(rev: &str) -> u64 {
    parse_rev(rev).map(|(g, _)| g).unwrap_or(0)
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Deterministic revision id as Sync Gateway computes it: MD5 over one byte holding the length of
/// the parent id, the parent id, and the canonical JSON (sorted keys, compact) of the body with
/// `_deleted` when set. Attachment digests are folded in when present, so two edits that differ only
/// in attachments do not collide.
pub fn compute_rev(
    parent: Option<&str>,
    canonical_body: &[u8],
    attachment_digests: &[(String, String)],
) -> String {
    let gen = parent.map(generation).unwrap_or(0) + 1;
    let mut h = Md5::new();
    let p = parent.unwrap_or("");
    h.update([p.len().min(255) as u8]);
    h.update(p.as_bytes());
    h.update(canonical_body);
    for (name, digest) in attachment_digests {
        h.update(b"\0");
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(digest.as_bytes());
    }
    format!("{}-{}", gen, hex::encode(h.finalize()))
}

/// A document's revision tree.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevTree {
    pub nodes: Vec<RevNode>,
}

impl RevTree {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn index(&self) -> HashMap<&str, usize> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.rev.as_str(), i))
            .collect()
    }

    pub fn get(&self, rev: &str) -> Option<&RevNode> {
        self.nodes.iter().find(|n| n.rev == rev)
    }

    pub fn contains(&self, rev: &str) -> bool {
        self.get(rev).is_some()
    }

    /// Revisions that no other revision names as parent.
    pub fn leaves(&self) -> Vec<&RevNode> {
        let parents: HashSet<&str> = self
            .nodes
            .iter()
            .filter_map(|n| n.parent.as_deref())
            .collect();
        self.nodes
            .iter()
            .filter(|n| !parents.contains(n.rev.as_str()))
            .collect()
    }

    pub fn is_leaf(&self, rev: &str) -> bool {
        self.contains(rev) && !self.nodes.iter().any(|n| n.parent.as_deref() == Some(rev))
    }

    /// CouchDB's winner: live leaves before tombstones, then highest generation, then highest id.
    pub fn winner(&self) -> Option<&RevNode> {
        self.leaves()
            .into_iter()
            .max_by(|a, b| Self::rank(a).cmp(&Self::rank(b)))
    }

    fn rank(n: &RevNode) -> (bool, u64, &str) {
        let (gen, suffix) = parse_rev(&n.rev).unwrap_or((0, ""));
        (!n.deleted, gen, suffix)
    }

    /// Leaves sorted winner first, then by CouchDB rank descending.
    pub fn sorted_leaves(&self) -> Vec<&RevNode> {
        let mut l = self.leaves();
        l.sort_by(|a, b| Self::rank(b).cmp(&Self::rank(a)));
        l
    }

    /// The revision and its known ancestors, newest first.
    pub fn history(&self, rev: &str) -> Vec<String> {
        let idx = self.index();
        let mut out = Vec::new();
        let mut cur = idx.get(rev).copied();
        while let Some(i) = cur {
            let n = &self.nodes[i];
            out.push(n.rev.clone());
            cur = n.parent.as_deref().and_then(|p| idx.get(p).copied());
            if out.len() > self.nodes.len() {
                break; // defensive: a cycle cannot happen, but never loop forever
            }
        }
        out
    }

    /// Adds a new child revision (interactive edit). The caller has checked the parent.
    pub fn add(&mut self, node: RevNode) {
        self.nodes.push(node);
    }

    /// Inserts a replicated revision given its history (newest first, as `_revisions` lists it).
    /// Missing ancestors are added without bodies. Returns false when the revision already existed.
    pub fn graft(
        &mut self,
        history: &[String],
        deleted: bool,
        seq: u64,
        channels: Vec<String>,
    ) -> bool {
        let Some(newest) = history.first() else {
            return false;
        };
        if self.contains(newest) {
            return false;
        }
        // Find the newest ancestor already in the tree; everything newer is added.
        let known = history
            .iter()
            .position(|r| self.contains(r))
            .unwrap_or(history.len());
        let mut parent: Option<String> = history.get(known).cloned();
        for (i, rev) in history[..known].iter().enumerate().rev() {
            let is_leaf = i == 0;
            self.nodes.push(RevNode {
                rev: rev.clone(),
                parent: parent.clone(),
                deleted: is_leaf && deleted,
                seq,
                has_body: is_leaf,
                channels: if is_leaf {
                    channels.clone()
                } else {
                    Vec::new()
                },
                access: RevAccess::default(),
            });
            parent = Some(rev.clone());
        }
        true
    }

    /// Drops revisions further than `limit` generations from every leaf. Returns the removed
    /// revisions that had bodies, so their bodies can be deleted.
    pub fn prune(&mut self, limit: usize) -> Vec<String> {
        if self.nodes.len() <= limit {
            return Vec::new();
        }
        let mut keep: HashSet<String> = HashSet::new();
        for leaf in self.leaves() {
            for r in self.history(&leaf.rev).into_iter().take(limit) {
                keep.insert(r);
            }
        }
        let mut removed = Vec::new();
        self.nodes.retain(|n| {
            let k = keep.contains(&n.rev);
            if !k && n.has_body {
                removed.push(n.rev.clone());
            }
            k
        });
        let present: HashSet<String> = self.nodes.iter().map(|n| n.rev.clone()).collect();
        for n in &mut self.nodes {
            if n.parent.as_ref().is_some_and(|p| !present.contains(p)) {
                n.parent = None;
            }
        }
        removed
    }

    /// Highest generation among the given revisions that exist in this tree (0 if none).
    pub fn max_known_generation<'a>(&self, revs: impl IntoIterator<Item = &'a String>) -> u64 {
        revs.into_iter()
            .filter(|r| self.contains(r))
            .map(|r| generation(r))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(rev: &str, parent: Option<&str>, deleted: bool) -> RevNode {
        RevNode {
            rev: rev.into(),
            parent: parent.map(Into::into),
            deleted,
            seq: 1,
            has_body: true,
            channels: vec![],
            access: RevAccess::default(),
        }
    }

    #[test]
    fn sg_rev_vectors() {
        assert_eq!(
            compute_rev(None, br#"{"prop":true}"#, &[]),
            "1-45ca73d819d5b1c9b8eea95290e79004"
        );
        assert_eq!(
            compute_rev(None, br#"{"n":1}"#, &[]),
            "1-50133ddd8e49efad34ad9ecae4cb9907"
        );
        assert_eq!(
            compute_rev(None, br#"{"n":2}"#, &[]),
            "1-035168c88bd4b80fb098a8da72f881ce"
        );
    }

    #[test]
    fn rev_is_deterministic_and_depends_on_parent_and_attachments() {
        let a = compute_rev(Some("1-abc"), b"{}", &[]);
        assert_eq!(a, compute_rev(Some("1-abc"), b"{}", &[]));
        assert!(a.starts_with("2-"));
        assert_ne!(a, compute_rev(Some("1-abd"), b"{}", &[]));
        assert_ne!(
            a,
            compute_rev(Some("1-abc"), b"{}", &[("a".into(), "md5-x".into())])
        );
    }

    #[test]
    fn parse_rev_rejects_garbage() {
        for bad in [
            "",
            "1",
            "-abc",
            "0-abc",
            "x-abc",
            "1-",
            "1-a b",
            "1-ab\"c",
            "99999999999999999-a",
        ] {
            assert!(parse_rev(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_rev("12-abcdef").unwrap(), (12, "abcdef"));
    }

    #[test]
    fn winner_prefers_live_then_generation_then_id() {
        let mut t = RevTree::default();
        t.add(node("1-a", None, false));
        t.add(node("2-b", Some("1-a"), false));
        t.add(node("2-c", Some("1-a"), false));
        assert_eq!(t.winner().unwrap().rev, "2-c");
        t.add(node("3-d", Some("2-c"), true));
        // live 2-b beats the deleted 3-d
        assert_eq!(t.winner().unwrap().rev, "2-b");
        let leaves: Vec<_> = t.sorted_leaves().iter().map(|n| n.rev.clone()).collect();
        assert_eq!(leaves, vec!["2-b", "3-d"]);
        t.add(node("3-e", Some("2-b"), true));
        // all deleted: highest generation, then id
        assert_eq!(t.winner().unwrap().rev, "3-e");
    }

    #[test]
    fn graft_adds_missing_ancestry_and_conflicting_branches() {
        let mut t = RevTree::default();
        assert!(t.graft(&["2-b".into(), "1-a".into()], false, 1, vec![]));
        assert_eq!(t.nodes.len(), 2);
        assert!(!t.get("1-a").unwrap().has_body);
        assert!(t.get("2-b").unwrap().has_body);
        // a conflicting branch off 1-a
        assert!(t.graft(
            &["3-y".into(), "2-x".into(), "1-a".into()],
            false,
            2,
            vec![]
        ));
        assert_eq!(t.leaves().len(), 2);
        assert_eq!(t.winner().unwrap().rev, "3-y");
        assert_eq!(t.history("3-y"), vec!["3-y", "2-x", "1-a"]);
        // already present: no-op
        assert!(!t.graft(&["2-b".into(), "1-a".into()], false, 3, vec![]));
        // unrelated root (no shared history) is kept as a second tree
        assert!(t.graft(&["5-z".into(), "4-w".into()], true, 4, vec![]));
        assert_eq!(t.history("5-z"), vec!["5-z", "4-w"]);
        assert!(t.get("5-z").unwrap().deleted);
        assert!(!t.get("4-w").unwrap().deleted);
    }

    #[test]
    fn prune_keeps_leaves_and_recent_ancestors() {
        let mut t = RevTree::default();
        let mut parent: Option<String> = None;
        for g in 1..=30 {
            let rev = format!("{g}-r");
            t.add(node(&rev, parent.as_deref(), false));
            parent = Some(rev);
        }
        t.add(node("26-branch", Some("25-r"), false));
        let removed = t.prune(20);
        assert!(t.contains("30-r") && t.contains("11-r") && t.contains("26-branch"));
        assert!(t.contains("7-r"), "within 20 of the branch leaf");
        assert!(!t.contains("6-r") && !t.contains("1-r"));
        assert!(removed.contains(&"1-r".to_string()));
        assert_eq!(t.history("30-r").len(), 30 - 7 + 1);
        assert_eq!(t.get("7-r").unwrap().parent, None, "new root after pruning");
        // leaves are never pruned
        assert_eq!(t.leaves().len(), 2);
        assert_eq!(t.winner().unwrap().rev, "30-r");
    }
}
