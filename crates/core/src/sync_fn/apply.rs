//! Running the sync function on the writes of a request, before they reach the store: builds
//! `doc` (with the new revision's `_rev`) and `oldDoc` (the parent's body), runs the calls of a
//! request in parallel on the workers, and puts the decided channels and grants into each
//! write. Writes the store would refuse anyway (a conflict, an existing revision) are passed on
//! without a call, so the store reports them as it always has.
//!
//! After the write: when a write made another, existing branch the winner (the winning branch
//! was deleted), the function re-runs for the new winner as admin and its channels and grants
//! replace the ones that branch was written with (a failure keeps those; the caller's write
//! stands). Grants a document of a `_bulk_docs` request gives the caller count for the later
//! documents of the same request (Sync Gateway reloads the user after each write): the request
//! is written up to that document, the caller reloaded, and the rest decided again.

use std::collections::{BTreeMap, BTreeSet};

use syncgate_auth::{Caller, GUEST};
use syncgate_storage::json::{push_members, push_str};
use syncgate_storage::{
    attachment_digest, compute_rev, AttachmentInput, DocMeta, DocWrite, Restamp, RevAccess,
    RevNode, WriteOutcome,
};

use super::{Decision, SyncFunction};
use crate::database::Database;
use crate::error::{Error, Result};
use crate::read_ahead::ReadAhead;

/// `{"_id":…,"_rev":…[,"_deleted":true],…members}` (`rev` omitted when `None`).
pub(crate) fn doc_text(id: &str, rev: Option<&str>, deleted: bool, members: &[u8]) -> String {
    let mut out = Vec::with_capacity(members.len() + id.len() + 64);
    out.extend_from_slice(b"{\"_id\":");
    push_str(&mut out, id);
    if let Some(rev) = rev {
        out.extend_from_slice(b",\"_rev\":");
        push_str(&mut out, rev);
    }
    if deleted {
        out.extend_from_slice(b",\"_deleted\":true");
    }
    push_members(&mut out, members);
    out.push(b'}');
    // the members are JSON text from a parsed request or the store
    String::from_utf8(out).unwrap_or_default()
}

/// What the function decided for one write of a request.
struct Decided {
    write: DocWrite,
    /// `Ok(None)`: no call was needed (a revision the store already has).
    outcome: Result<Option<Decision>>,
    /// The write makes another existing branch the winner.
    switches_winner: bool,
}

/// Whether the write `(parent, rev, deleted)` or a graft leaves the document with a winner
/// that is neither the one before nor the new revision.
fn switches(
    meta: &DocMeta,
    change: impl FnOnce(&mut syncgate_storage::RevTree),
    rev: &str,
) -> bool {
    // with one leaf, the winner after a write is that leaf or the new revision
    if meta.tree.leaves().len() < 2 {
        return false;
    }
    let before = meta.tree.winner().map(|n| n.rev.clone());
    let mut tree = meta.tree.clone();
    change(&mut tree);
    let after = tree.winner().map(|n| n.rev.as_str());
    after != Some(rev) && after != before.as_deref()
}

/// Whether `access` gives `caller` a channel or role it does not hold yet.
fn grants_to(caller: &Caller, access: &RevAccess) -> bool {
    let Some(u) = caller.user() else {
        return false;
    };
    let name = u.name.as_deref().unwrap_or(GUEST);
    let new_channel = |chans: &BTreeSet<String>| chans.iter().any(|c| !u.channels.contains_key(c));
    access.channels.iter().any(|(who, chans)| {
        let mine = who == name
            || who
                .strip_prefix("role:")
                .is_some_and(|r| u.roles.contains(r));
        mine && new_channel(chans)
    }) || access
        .roles
        .get(name)
        .is_some_and(|roles| roles.iter().any(|r| !u.roles.contains(r)))
}

/// The winning revision of a document as the function sees it.
pub(crate) struct Winner {
    pub rev: String,
    pub deleted: bool,
    pub channels: Vec<String>,
    pub access: RevAccess,
    /// `doc`: the body with `_id`, `_rev` (and `_deleted`).
    pub doc: String,
    /// `oldDoc`: the parent's body when the server still has it.
    pub old_doc: Option<String>,
    /// The body's members, parsed (for the default function's `channels` rule).
    pub json: Vec<u8>,
}

impl Winner {
    /// The restamp that makes `decision` the winner's, if it changes anything. A tombstone the
    /// function gives no channels keeps the ones it has (its parent's), as on a write.
    pub fn restamp(&self, id: &str, decision: Decision) -> Option<Restamp> {
        let channels = if self.deleted && decision.channels.is_empty() {
            self.channels.clone()
        } else {
            decision.channels
        };
        let same = channels.iter().collect::<BTreeSet<_>>()
            == self.channels.iter().collect::<BTreeSet<_>>()
            && decision.access == self.access;
        (!same).then(|| Restamp {
            id: id.to_string(),
            rev: self.rev.clone(),
            channels,
            access: decision.access,
        })
    }
}

impl Database {
    /// `doc` and `oldDoc` of a write, and whether it makes another branch the winner; `None`
    /// for a replicated revision the store already has (a no-op); an error for an edit the
    /// store would refuse.
    async fn sync_inputs(
        &self,
        w: &DocWrite,
        ahead: &mut ReadAhead,
    ) -> Result<Option<(String, Option<String>, bool)>> {
        match w {
            DocWrite::Edit {
                id,
                parent,
                deleted,
                body,
                canonical,
                attachments,
                must_exist,
                ..
            } => {
                let meta = ahead.meta(&*self.store, id).await?;
                // the parent as the store will resolve it; what the store would refuse is
                // refused here with the store's error, without a call
                let conflict = || Err(Error::Conflict("Document update conflict".into()));
                let parent = match (&meta, parent) {
                    (None, Some(_)) => return conflict(),
                    (None, None) if *must_exist => return Err(Error::not_found("missing")),
                    (None, None) => None,
                    (Some(m), Some(p)) => {
                        if !m.tree.is_leaf(p) {
                            return conflict();
                        }
                        Some(p.clone())
                    }
                    (Some(m), None) => match m.winner() {
                        Some((_, false)) => return conflict(),
                        Some((_, true)) if *must_exist => return Err(Error::not_found("deleted")),
                        Some((w, true)) => Some(w.to_string()),
                        None => None,
                    },
                };
                let parent_deleted = match (&meta, &parent) {
                    (Some(m), Some(p)) => m.tree.get(p).is_some_and(|n| n.deleted),
                    _ => false,
                };
                let parent_body = match &parent {
                    Some(p) => ahead.body(&*self.store, id, p).await?,
                    None => None,
                };
                // the new revision id, computed as the store will (attachment digests by name)
                let mut digests: BTreeMap<String, String> = BTreeMap::new();
                for (name, a) in attachments {
                    let d = match a {
                        AttachmentInput::Data { data, .. } => attachment_digest(data),
                        AttachmentInput::Stub {
                            digest: Some(d), ..
                        } => d.clone(),
                        AttachmentInput::Stub { digest: None, .. } => parent_body
                            .as_ref()
                            .and_then(|b| b.attachment(name))
                            .map(|m| m.digest.clone())
                            .unwrap_or_default(),
                    };
                    digests.insert(name.clone(), d);
                }
                let digests: Vec<(String, String)> = digests.into_iter().collect();
                let rev = compute_rev(parent.as_deref(), canonical, &digests);
                let doc = doc_text(id, Some(&rev), *deleted, body);
                let old = parent_body.map(|b| doc_text(id, None, parent_deleted, &b.json));
                let switch = meta.as_ref().is_some_and(|m| {
                    let node = RevNode {
                        rev: rev.clone(),
                        parent: parent.clone(),
                        deleted: *deleted,
                        seq: 0,
                        has_body: true,
                        channels: Vec::new(),
                        access: RevAccess::default(),
                    };
                    switches(m, |t| t.add(node), &rev)
                });
                Ok(Some((doc, old, switch)))
            }
            DocWrite::Replicate {
                id,
                history,
                deleted,
                body,
                ..
            } => {
                let Some(rev) = history.first() else {
                    return Ok(None);
                };
                let meta = ahead.meta(&*self.store, id).await?;
                let tree = meta.as_ref().map(|m| &m.tree);
                if tree.is_some_and(|t| t.contains(rev)) {
                    return Ok(None);
                }
                // the nearest ancestor whose body the server has; a branch that connects to
                // nothing stored (a disconnected branch, or one grafted below pruned bodies) of
                // an existing document is judged against the document as it is (its winner),
                // so `requireUser(oldDoc.owner)` cannot be bypassed by pushing a new branch
                let base = tree.and_then(|t| {
                    history[1..]
                        .iter()
                        .find_map(|r| t.get(r).filter(|n| n.has_body))
                        .or_else(|| t.winner().filter(|n| n.has_body))
                });
                let old = match base {
                    Some(n) => ahead
                        .body(&*self.store, id, &n.rev)
                        .await?
                        .map(|b| doc_text(id, None, n.deleted, &b.json)),
                    None => None,
                };
                let switch = meta.as_ref().is_some_and(|m| {
                    switches(
                        m,
                        |t| {
                            t.graft(history, *deleted, 0, Vec::new());
                        },
                        rev,
                    )
                });
                Ok(Some((doc_text(id, Some(rev), *deleted, body), old, switch)))
            }
        }
    }

    /// The documents of a request's writes and the bodies their calls will get as `oldDoc`,
    /// read in one store call each (on a networked store, two round trips for a `_bulk_docs`
    /// instead of two per document). A guess for reading only: [`Database::sync_inputs`]
    /// decides again and reads what it missed on its own — also everything, when reading
    /// ahead failed (those reads then report the error per document).
    async fn read_inputs_ahead(&self, writes: &[DocWrite]) -> ReadAhead {
        let mut ahead = ReadAhead::default();
        let ids: Vec<&str> = writes.iter().map(DocWrite::id).collect();
        if ahead.load_metas(&*self.store, &ids).await.is_err() {
            return ReadAhead::default();
        }
        let revs: Vec<(&str, String)> = writes
            .iter()
            .filter_map(|w| {
                let tree = &ahead.cached_meta(w.id())?.tree;
                let rev = match w {
                    DocWrite::Edit {
                        parent: Some(p), ..
                    } => p.clone(),
                    DocWrite::Edit { parent: None, .. } => tree.winner()?.rev.clone(),
                    DocWrite::Replicate { history, .. } => history
                        .get(1..)?
                        .iter()
                        .find_map(|r| tree.get(r).filter(|n| n.has_body))
                        .or_else(|| tree.winner().filter(|n| n.has_body))?
                        .rev
                        .clone(),
                };
                Some((w.id(), rev))
            })
            .collect();
        let revs: Vec<(&str, &str)> = revs.iter().map(|(id, r)| (*id, r.as_str())).collect();
        if ahead.load_bodies(&*self.store, &revs).await.is_err() {
            return ReadAhead::default();
        }
        ahead
    }

    /// Runs the function on each write of a request (in parallel on the workers).
    async fn decide(
        &self,
        f: &SyncFunction,
        caller: &Caller,
        writes: Vec<DocWrite>,
    ) -> Vec<Decided> {
        let ctx = super::call_user(caller);
        let _deciding = f.gather.deciding();
        let mut ahead = self.read_inputs_ahead(&writes).await;
        let mut pending = Vec::with_capacity(writes.len());
        for w in writes {
            let (call, switch) = match self.sync_inputs(&w, &mut ahead).await {
                Ok(Some((doc, old, switch))) => (
                    Ok(Some(f.submit(w.id().to_string(), doc, old, ctx.clone()))),
                    switch,
                ),
                Ok(None) => (Ok(None), false),
                Err(e) => (Err(e), false),
            };
            pending.push((w, call, switch));
        }
        let mut out = Vec::with_capacity(pending.len());
        for (write, call, switches_winner) in pending {
            let outcome = match call {
                Err(e) => Err(e),
                Ok(None) => Ok(None),
                Ok(Some(call)) => call.await.map(Some),
            };
            out.push(Decided {
                write,
                outcome,
                switches_winner,
            });
        }
        out
    }

    /// Runs the configured sync function on each write (none configured: the writes go to the
    /// store as they are), stores the accepted ones and settles the winners they switched.
    /// One result per write, in order; a rejected write is its error and stores nothing.
    pub(crate) async fn write_synced(
        &self,
        caller: &Caller,
        writes: Vec<DocWrite>,
    ) -> Result<Vec<Result<WriteOutcome>>> {
        let Some(f) = self.sync_function() else {
            return Ok(self
                .write(writes)
                .await?
                .into_iter()
                .map(|r| r.map_err(Error::from))
                .collect());
        };
        let mut results = Vec::with_capacity(writes.len());
        let mut caller = caller.clone();
        let mut pending = writes;
        while !pending.is_empty() {
            let mut decided = self.decide(&f, &caller, pending).await;
            // a document that grants the caller something: the later ones are decided again
            // once it is written — when one of them read the caller's channels or roles, or
            // was refused (calls that read neither are decided the same either way)
            let consulted_after = {
                let mut seen = false;
                let mut after = vec![false; decided.len()];
                for (i, d) in decided.iter().enumerate().rev() {
                    after[i] = seen;
                    seen |= match &d.outcome {
                        Ok(Some(dec)) => dec.consulted,
                        Ok(None) => false,
                        Err(_) => true,
                    };
                }
                after
            };
            let cut = decided
                .iter()
                .enumerate()
                .position(|(i, d)| {
                    consulted_after[i]
                        && matches!(&d.outcome, Ok(Some(dec)) if grants_to(&caller, &dec.access))
                })
                .map(|i| i + 1)
                .unwrap_or(decided.len());
            pending = decided
                .split_off(cut)
                .into_iter()
                .map(|d| d.write)
                .collect();
            let mut slots: Vec<Option<Result<WriteOutcome>>> = Vec::with_capacity(decided.len());
            let mut writes = Vec::with_capacity(decided.len());
            let mut at = Vec::with_capacity(decided.len());
            for d in decided {
                let mut w = d.write;
                match d.outcome {
                    Err(e) => {
                        slots.push(Some(Err(e)));
                        continue;
                    }
                    Ok(Some(decision)) => match &mut w {
                        DocWrite::Edit {
                            channels, access, ..
                        }
                        | DocWrite::Replicate {
                            channels, access, ..
                        } => {
                            *channels = decision.channels;
                            *access = decision.access;
                        }
                    },
                    Ok(None) => {}
                }
                at.push((slots.len(), d.switches_winner));
                slots.push(None);
                writes.push(w);
            }
            let written = self.write_gathered(&f, writes).await?;
            for ((slot, switched), r) in at.into_iter().zip(written) {
                if let (true, Ok(o)) = (switched, &r) {
                    if o.seq > 0 {
                        self.settle_winner(&f, &o.id, &o.rev).await;
                    }
                }
                slots[slot] = Some(r.map_err(Error::from));
            }
            results.extend(slots.into_iter().map(|s| {
                s.unwrap_or_else(|| Err(Error::Internal("a write got no result".into())))
            }));
            if !pending.is_empty() {
                caller = self.refresh_caller(&caller).await.unwrap_or(caller);
            }
        }
        Ok(results)
    }

    /// Stores a request's decided writes through the function's gathering point (see
    /// [`super::gather`]) and waits until they are durable.
    async fn write_gathered(
        &self,
        f: &SyncFunction,
        writes: Vec<DocWrite>,
    ) -> Result<Vec<std::result::Result<WriteOutcome, syncgate_storage::StorageError>>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let stored = f.gather.write(&self.store, writes).await?;
        self.settle_stored(stored).await
    }

    /// The winning revision of a document with the function's inputs; `None` when the
    /// document or the winner's body is gone.
    pub(crate) async fn winner_inputs(&self, id: &str, meta: &DocMeta) -> Result<Option<Winner>> {
        let Some(w) = meta.tree.winner() else {
            return Ok(None);
        };
        let Some(body) = self.store.rev_body(id, &w.rev).await? else {
            return Ok(None);
        };
        let parent = w
            .parent
            .as_deref()
            .and_then(|p| meta.tree.get(p))
            .filter(|n| n.has_body);
        let old_doc = match parent {
            Some(p) => self
                .store
                .rev_body(id, &p.rev)
                .await?
                .map(|b| doc_text(id, None, p.deleted, &b.json)),
            None => None,
        };
        Ok(Some(Winner {
            rev: w.rev.clone(),
            deleted: w.deleted,
            channels: w.channels.clone(),
            access: w.access.clone(),
            doc: doc_text(id, Some(&w.rev), w.deleted, &body.json),
            old_doc,
            json: body.json,
        }))
    }

    /// After a write made another branch the winner: the function re-runs for that winner as
    /// admin; its channels and grants become the document's. A failure is logged and keeps
    /// what the branch was written with — never an error for the caller, whose write is done.
    async fn settle_winner(&self, f: &SyncFunction, id: &str, written: &str) {
        let short = crate::short(id);
        let winner = match self.store.doc_meta(id).await {
            Ok(Some(meta)) => self.winner_inputs(id, &meta).await,
            Ok(None) => Ok(None),
            Err(e) => Err(e.into()),
        };
        let w = match winner {
            Ok(Some(w)) if w.rev != written => w,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(doc = %short, "cannot re-run the sync function for the new winner: {e}");
                return;
            }
        };
        let decision = match f.run(id, w.doc.clone(), w.old_doc.clone(), None).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(doc = %short, rev = %w.rev, "the sync function failed for the new winning revision ({e}); keeping its channels and grants");
                return;
            }
        };
        let Some(stamp) = w.restamp(id, decision) else {
            return;
        };
        let done = match self.store.restamp_docs(vec![stamp]).await {
            Ok((_, ticket)) => self.store.durable(ticket).await.map_err(Error::from),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = done {
            tracing::warn!(doc = %short, "cannot store the new winner's channels and grants: {e}");
        }
    }
}
