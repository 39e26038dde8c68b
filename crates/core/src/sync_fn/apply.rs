//! Running the sync function on the writes of a request, before they reach the store: builds
//! `doc` (with the new revision's `_rev`) and `oldDoc` (the parent's body), runs the calls of a
//! request in parallel on the workers, and puts the decided channels and grants into each
//! write. Writes the store would refuse anyway (a conflict, an existing revision) are passed on
//! without a call, so the store reports them as it always has.

use std::collections::BTreeMap;

use syncgate_auth::Caller;
use syncgate_storage::json::{push_members, push_str};
use syncgate_storage::{attachment_digest, compute_rev, AttachmentInput, DocWrite};

use crate::database::Database;
use crate::error::{Error, Result};

/// `{"_id":…,"_rev":…[,"_deleted":true],…members}` (`rev` omitted when `None`).
fn doc_text(id: &str, rev: Option<&str>, deleted: bool, members: &[u8]) -> String {
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

impl Database {
    /// `doc` and `oldDoc` of a write; `None` for a replicated revision the store already has
    /// (a no-op); an error for an edit the store would refuse.
    fn sync_inputs(&self, w: &DocWrite) -> Result<Option<(String, Option<String>)>> {
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
                let meta = self.store.doc_meta(id)?;
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
                    Some(p) => self.store.rev_body(id, p)?,
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
                Ok(Some((doc, old)))
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
                let meta = self.store.doc_meta(id)?;
                let tree = meta.as_ref().map(|m| &m.tree);
                if tree.is_some_and(|t| t.contains(rev)) {
                    return Ok(None);
                }
                // the nearest ancestor whose body the server has
                let base = tree.and_then(|t| {
                    history[1..]
                        .iter()
                        .find_map(|r| t.get(r).filter(|n| n.has_body))
                });
                let old = match base {
                    Some(n) => self
                        .store
                        .rev_body(id, &n.rev)?
                        .map(|b| doc_text(id, None, n.deleted, &b.json)),
                    None => None,
                };
                Ok(Some((doc_text(id, Some(rev), *deleted, body), old)))
            }
        }
    }

    /// Runs the configured sync function on each write (none configured: the writes are
    /// returned unchanged). A rejected write becomes its error and is never stored.
    pub(crate) async fn run_sync(
        &self,
        caller: &Caller,
        writes: Vec<DocWrite>,
    ) -> Result<Vec<Result<DocWrite>>> {
        let Some(f) = self.sync_function() else {
            return Ok(writes.into_iter().map(Ok).collect());
        };
        let ctx = super::user_ctx_json(caller);
        let mut pending = Vec::with_capacity(writes.len());
        for w in writes {
            let call = match self.sync_inputs(&w) {
                Ok(Some((doc, old))) => {
                    Ok(Some(f.submit(w.id().to_string(), doc, old, ctx.clone())))
                }
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            pending.push((w, call));
        }
        let mut out = Vec::with_capacity(pending.len());
        for (mut w, call) in pending {
            out.push(match call {
                Err(e) => Err(e),
                Ok(None) => Ok(w),
                Ok(Some(call)) => match call.await {
                    Ok(decision) => {
                        match &mut w {
                            DocWrite::Edit {
                                channels, access, ..
                            }
                            | DocWrite::Replicate {
                                channels, access, ..
                            } => {
                                *channels = decision.channels;
                                *access = decision.access;
                            }
                        }
                        Ok(w)
                    }
                    Err(e) => Err(e),
                },
            });
        }
        Ok(out)
    }
}
